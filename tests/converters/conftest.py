"""Small fitted models and their ONNX, shared by the converter tests."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer, load_iris
from sklearn.linear_model import LogisticRegression

import converters
from converters.result import ConvertedModel
from tests.converters.matrix import to_csv

warnings.filterwarnings("ignore", category=DeprecationWarning)


@pytest.fixture(scope="session")
def iris_model() -> tuple[LogisticRegression, pd.DataFrame]:
    x, y = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=1000).fit(x, y)
    return model, pd.DataFrame(x[::3], columns=[f"f{i}" for i in range(4)])


@pytest.fixture(scope="session")
def iris_converted(iris_model: tuple[LogisticRegression, pd.DataFrame]) -> ConvertedModel:
    model, frame = iris_model
    return converters.convert_estimator(model, to_csv(frame))


@pytest.fixture(scope="session")
def cancer_frame() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_breast_cancer(return_X_y=True)
    return x, y
