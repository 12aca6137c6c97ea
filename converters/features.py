"""How a model's features map onto ONNX inputs, derived from the sample.

Two layouts: ``matrix`` (every feature numeric: one FP32 input named "input" of shape
[-1, n]) and ``columns`` (mixed or named columns: one [-1, 1] input per column, FP32 for
numbers, BYTES for text), which is what skl2onnx needs for a ColumnTransformer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from converters.exceptions import SampleError

if TYPE_CHECKING:
    import pandas as pd

MATRIX_INPUT = "input"


@dataclass(frozen=True)
class FeatureLayout:
    mode: Literal["matrix", "columns"]
    columns: tuple[str, ...]
    categorical: frozenset[str]
    named: bool  # the estimator was fitted on named columns (feature_names_in_)
    input_name: str = MATRIX_INPUT  # the single input's name in "matrix" mode

    def initial_types(self) -> list[tuple[str, Any]]:
        from skl2onnx.common.data_types import FloatTensorType, StringTensorType

        if self.mode == "matrix":
            return [(self.input_name, FloatTensorType([None, len(self.columns)]))]
        return [
            (
                c,
                StringTensorType([None, 1])
                if c in self.categorical
                else FloatTensorType([None, 1]),
            )
            for c in self.columns
        ]

    def original_input(self, frame: pd.DataFrame, *, as_float32: bool = True) -> Any:
        """What the original model is fed: by default numbers rounded through float32, the
        precision the ONNX model and the agents work in; ``as_float32=False`` keeps them
        as they are (parity uses both to recognise float ties)."""
        frame = frame[list(self.columns)].copy()
        for c in self.columns:
            if c not in self.categorical:
                frame[c] = frame[c].astype(np.float64)
                if as_float32:
                    frame[c] = frame[c].astype(np.float32).astype(np.float64)
        if self.named or self.mode == "columns":
            return frame
        return frame.to_numpy(dtype=np.float64)

    def onnx_feed(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        if self.mode == "matrix":
            return {self.input_name: frame[list(self.columns)].to_numpy(dtype=np.float32)}
        feed: dict[str, np.ndarray] = {}
        for c in self.columns:
            if c in self.categorical:
                feed[c] = np.array([str(v) for v in frame[c]], dtype=object).reshape(-1, 1)
            else:
                feed[c] = frame[c].to_numpy(dtype=np.float32).reshape(-1, 1)
        return feed

    def feature_inputs(self) -> list[tuple[str, str, int]]:
        """(feature, ONNX input, column index within that input) for the profile."""
        if self.mode == "matrix":
            return [(c, self.input_name, i) for i, c in enumerate(self.columns)]
        return [(c, c, 0) for c in self.columns]


def _uses_named_columns(estimator: Any) -> bool:
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    if isinstance(estimator, Pipeline):
        return any(_uses_named_columns(step) for _, step in estimator.steps)
    if isinstance(estimator, ColumnTransformer):
        for _, _, cols in estimator.transformers:
            if isinstance(cols, str) or callable(cols):
                return True
            if any(isinstance(c, str) for c in np.atleast_1d(cols)):
                return True
    return False


def align(estimator: Any, frame: pd.DataFrame) -> tuple[pd.DataFrame, FeatureLayout]:
    """Select and order the sample's columns as the estimator expects; pick the layout."""
    import pandas as pd

    names_attr = getattr(estimator, "feature_names_in_", None)
    named = names_attr is not None
    if names_attr is not None:
        wanted = [str(c) for c in names_attr]
        missing = [c for c in wanted if c not in frame.columns]
        if missing:
            raise SampleError(
                f"sample lacks columns the model was trained on: {', '.join(missing[:20])}"
            )
        frame = frame[wanted]
    else:
        n = getattr(estimator, "n_features_in_", None)
        if isinstance(n, (int, np.integer)) and frame.shape[1] != n:
            raise SampleError(
                f"sample has {frame.shape[1]} columns but the model expects {int(n)} features; "
                "remove the label column and keep the training column order"
            )
        wanted = [str(c) for c in frame.columns]
    categorical = frozenset(
        c
        for c in wanted
        if not (pd.api.types.is_numeric_dtype(frame[c]) or pd.api.types.is_bool_dtype(frame[c]))
    )
    for c in categorical:
        if frame[c].isna().any():
            raise SampleError(
                f"text column {c!r} has empty cells; the ONNX string input cannot express "
                "missing values: fill them with a category"
            )
    mode: Literal["matrix", "columns"] = (
        "columns" if categorical or _uses_named_columns(estimator) else "matrix"
    )
    return frame.reset_index(drop=True), FeatureLayout(mode, tuple(wanted), categorical, named)
