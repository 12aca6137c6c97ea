"""The estimator matrix the converter tests and bench/conversion.py run: every case is a
fitted model plus sample rows of the right shape, from datasets shipped in scikit-learn."""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import pandas as pd
from sklearn import datasets

warnings.filterwarnings("ignore", category=UserWarning)
warnings.filterwarnings("ignore", message=".*ConvergenceWarning.*")

SAMPLE_ROWS = 200


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], tuple[Any, pd.DataFrame]]  # fitted estimator, sample frame
    needs: str | None = None  # optional module


def to_csv(frame: pd.DataFrame) -> bytes:
    buf = io.StringIO()
    frame.to_csv(buf, index=False)
    return buf.getvalue().encode()


@cache
def _data(kind: str) -> tuple[np.ndarray, np.ndarray]:
    if kind == "iris":
        x, y = datasets.load_iris(return_X_y=True)
    elif kind == "cancer":
        x, y = datasets.load_breast_cancer(return_X_y=True)
    elif kind == "diabetes":
        x, y = datasets.load_diabetes(return_X_y=True)
    elif kind == "wine":
        x, y = datasets.load_wine(return_X_y=True)
    else:
        x, y = datasets.make_classification(
            n_samples=600, n_features=12, n_informative=6, random_state=0
        )
    return np.asarray(x, dtype=np.float64), np.asarray(y)


def _frame(x: np.ndarray) -> pd.DataFrame:
    rows = x[:: max(1, len(x) // SAMPLE_ROWS)][:SAMPLE_ROWS]
    return pd.DataFrame(rows, columns=[f"f{i}" for i in range(x.shape[1])])


def fitted(
    kind: str, make: Callable[[], Any], *, unsupervised: bool = False
) -> Callable[[], tuple[Any, pd.DataFrame]]:
    def build() -> tuple[Any, pd.DataFrame]:
        x, y = _data(kind)
        est = make()
        if unsupervised:
            est.fit(x)
        else:
            est.fit(x, y)
        return est, _frame(x)

    return build


def _mixed() -> tuple[Any, pd.DataFrame]:
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    rng = np.random.default_rng(0)
    n = 400
    frame = pd.DataFrame(
        {
            "age": rng.integers(18, 80, n).astype(float),
            "income": rng.normal(50_000, 15_000, n),
            "city": rng.choice(["lyon", "paris", "nice"], n),
            "plan": rng.choice(["free", "pro"], n),
        }
    )
    y = ((frame["plan"] == "pro") ^ (frame["age"] > 50)).astype(int)
    pre = ColumnTransformer(
        [
            ("num", StandardScaler(), ["age", "income"]),
            ("cat", OneHotEncoder(handle_unknown="ignore"), ["city", "plan"]),
        ]
    )
    model = Pipeline([("pre", pre), ("clf", LogisticRegression(max_iter=500))]).fit(frame, y)
    return model, frame.head(SAMPLE_ROWS)


def _cases() -> list[Case]:
    from sklearn import (
        decomposition,
        ensemble,
        linear_model,
        naive_bayes,
        neighbors,
        neural_network,
        pipeline,
        preprocessing,
        svm,
        tree,
    )

    c = Case
    return [
        c(
            "LogisticRegression",
            fitted("cancer", lambda: linear_model.LogisticRegression(max_iter=3000)),
        ),
        c(
            "RandomForestClassifier",
            fitted(
                "iris", lambda: ensemble.RandomForestClassifier(30, max_depth=8, random_state=0)
            ),
        ),
        c(
            "GradientBoostingClassifier",
            fitted(
                "wine", lambda: ensemble.GradientBoostingClassifier(n_estimators=30, random_state=0)
            ),
        ),
        c(
            "HistGradientBoostingClassifier",
            fitted(
                "synthetic",
                lambda: ensemble.HistGradientBoostingClassifier(max_iter=30, random_state=0),
            ),
        ),
        c(
            "ExtraTreesClassifier",
            fitted("cancer", lambda: ensemble.ExtraTreesClassifier(30, random_state=0)),
        ),
        c(
            "DecisionTreeClassifier",
            fitted("wine", lambda: tree.DecisionTreeClassifier(max_depth=6, random_state=0)),
        ),
        c("SVC(probability)", fitted("iris", lambda: svm.SVC(probability=True, random_state=0))),
        c("LinearSVC", fitted("synthetic", lambda: svm.LinearSVC(random_state=0))),
        c("KNeighborsClassifier", fitted("iris", lambda: neighbors.KNeighborsClassifier(5))),
        c(
            "MLPClassifier",
            fitted(
                "synthetic",
                lambda: neural_network.MLPClassifier((32,), max_iter=300, random_state=0),
            ),
        ),
        c("GaussianNB", fitted("wine", naive_bayes.GaussianNB)),
        c("Ridge", fitted("diabetes", linear_model.Ridge)),
        c("Lasso", fitted("diabetes", lambda: linear_model.Lasso(alpha=0.1))),
        c("LinearRegression", fitted("diabetes", linear_model.LinearRegression)),
        c("ElasticNet", fitted("diabetes", lambda: linear_model.ElasticNet(alpha=0.01))),
        c("SVR", fitted("diabetes", svm.SVR)),
        c(
            "RandomForestRegressor",
            fitted(
                "diabetes", lambda: ensemble.RandomForestRegressor(30, max_depth=8, random_state=0)
            ),
        ),
        c(
            "HistGradientBoostingRegressor",
            fitted(
                "diabetes",
                lambda: ensemble.HistGradientBoostingRegressor(max_iter=30, random_state=0),
            ),
        ),
        c("KNeighborsRegressor", fitted("diabetes", neighbors.KNeighborsRegressor)),
        c(
            "IsolationForest",
            fitted(
                "synthetic",
                lambda: ensemble.IsolationForest(n_estimators=30, random_state=0),
                unsupervised=True,
            ),
        ),
        c(
            "Pipeline(StandardScaler+LogisticRegression)",
            fitted(
                "wine",
                lambda: pipeline.make_pipeline(
                    preprocessing.StandardScaler(), linear_model.LogisticRegression(max_iter=1000)
                ),
            ),
        ),
        c(
            "Pipeline(PCA+RandomForest)",
            fitted(
                "cancer",
                lambda: pipeline.make_pipeline(
                    preprocessing.StandardScaler(),
                    decomposition.PCA(8),
                    ensemble.RandomForestClassifier(20, random_state=0),
                ),
            ),
        ),
        c("ColumnTransformer(OneHotEncoder+StandardScaler)+LogisticRegression", _mixed),
        c("StandardScaler", fitted("wine", preprocessing.StandardScaler, unsupervised=True)),
        c("MinMaxScaler", fitted("diabetes", preprocessing.MinMaxScaler, unsupervised=True)),
        c("LGBMClassifier", fitted("cancer", lambda: _lgbm("LGBMClassifier")), needs="lightgbm"),
        c("LGBMRegressor", fitted("diabetes", lambda: _lgbm("LGBMRegressor")), needs="lightgbm"),
        c("XGBClassifier", fitted("iris", lambda: _xgb("XGBClassifier")), needs="xgboost"),
        c("XGBRegressor", fitted("diabetes", lambda: _xgb("XGBRegressor")), needs="xgboost"),
    ]


def _lgbm(name: str) -> Any:
    import lightgbm

    return getattr(lightgbm, name)(n_estimators=30, num_leaves=15, verbose=-1, random_state=0)


def _xgb(name: str) -> Any:
    import xgboost

    return getattr(xgboost, name)(n_estimators=30, max_depth=4, random_state=0)


CASES = _cases()
