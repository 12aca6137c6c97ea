"""The sample CSV an engineer uploads with a model: parsed, bounded, explained when bad.

The sample drives parity, the self-test rows and the reference profile. Verification only:
bytes in, a DataFrame out, or a SampleError.
"""

from __future__ import annotations

import csv
import hashlib
import io
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from converters.exceptions import SampleError

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_MAX_ROWS = 10_000
DEFAULT_MAX_SAMPLE_BYTES = 50 * 1024 * 1024
SYNTHETIC_ROWS = 64


def sample_sha256(data: bytes | None) -> str | None:
    return hashlib.sha256(data).hexdigest() if data is not None else None


def parse_csv(
    data: bytes,
    *,
    max_rows: int = DEFAULT_MAX_ROWS,
    max_bytes: int = DEFAULT_MAX_SAMPLE_BYTES,
) -> pd.DataFrame:
    """Parse a CSV with a header row; keep at most ``max_rows`` data rows.

    Numeric columns become float64, anything else stays text (categorical).
    """
    import pandas as pd

    # Guards against memory exhaustion from an oversized upload.
    if len(data) > max_bytes:
        raise SampleError(f"sample is {len(data)} bytes, more than the limit of {max_bytes}")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise SampleError(f"sample is not UTF-8 text (byte {e.start}); save it as UTF-8 CSV") from e
    if not text.strip():
        raise SampleError("sample is empty; expected a CSV with a header row and data rows")
    if "\x00" in text:
        raise SampleError("sample contains NUL bytes; expected a text CSV")
    try:
        with warnings.catch_warnings():
            # pandas only warns when a row has more fields than the header: refuse it.
            warnings.simplefilter("error", pd.errors.ParserWarning)
            frame = pd.read_csv(
                io.StringIO(text), nrows=max_rows, skipinitialspace=True, index_col=False
            )
    except pd.errors.EmptyDataError as e:
        raise SampleError("sample has no header row") from e
    except (pd.errors.ParserError, pd.errors.ParserWarning, ValueError, csv.Error) as e:
        raise SampleError(f"sample is not a valid CSV: {e}") from e
    if frame.shape[0] == 0:
        raise SampleError("sample has a header but no data rows")
    names = [str(c) for c in frame.columns]
    if any(n.startswith("Unnamed: ") for n in names):
        raise SampleError("sample header has empty column names; name every column")
    if all(_is_number(n) for n in names):
        raise SampleError(
            "the first row of the sample looks like data, not a header; add a header row "
            "with the feature names"
        )
    frame.columns = pd.Index(names)
    for name in names:
        col = frame[name]
        if pd.api.types.is_bool_dtype(col) or pd.api.types.is_numeric_dtype(col):
            frame[name] = col.astype(np.float64)
    return frame


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def synthesize(estimator: Any, rows: int = SYNTHETIC_ROWS, seed: int = 0) -> pd.DataFrame:
    """Rows for a model published without a sample: standard-normal numbers, and for
    columns a fitted encoder knows, values drawn from its categories."""
    import pandas as pd

    n = getattr(estimator, "n_features_in_", None)
    if not isinstance(n, (int, np.integer)) or n <= 0:
        raise SampleError(
            f"{type(estimator).__name__} does not record its number of input features; "
            "publish it with a sample CSV"
        )
    names_attr = getattr(estimator, "feature_names_in_", None)
    names = [str(c) for c in names_attr] if names_attr is not None else [f"f{i}" for i in range(n)]
    rng = np.random.default_rng(seed)
    categories = _encoder_categories(estimator)
    data: dict[str, Any] = {}
    for i, name in enumerate(names):
        cats = categories.get(name, categories.get(i))
        if cats is not None and len(cats) > 0:
            picked = rng.choice(np.asarray(cats, dtype=object), size=rows)
            if all(isinstance(v, str) for v in cats):
                data[name] = [str(v) for v in picked]
            else:
                data[name] = np.asarray(picked, dtype=np.float64)
        else:
            data[name] = rng.standard_normal(rows)
    return pd.DataFrame(data)


def _encoder_categories(estimator: Any) -> dict[str | int, list[Any]]:
    """Column (name or index) -> categories of fitted OneHot/Ordinal encoders inside
    ColumnTransformers of ``estimator``."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    found: dict[str | int, list[Any]] = {}

    def encoders(obj: Any) -> list[Any]:
        if isinstance(obj, Pipeline):
            return [e for _, step in obj.steps for e in encoders(step)]
        return [obj] if hasattr(obj, "categories_") else []

    def walk(obj: Any) -> None:
        if isinstance(obj, Pipeline):
            for _, step in obj.steps:
                walk(step)
        elif isinstance(obj, ColumnTransformer):
            for _, trans, cols in getattr(obj, "transformers_", []):
                if isinstance(trans, str):
                    continue
                col_list = [cols] if isinstance(cols, (str, int)) else list(np.atleast_1d(cols))
                for enc in encoders(trans):
                    for col, cats in zip(col_list, enc.categories_, strict=False):
                        key = col.item() if isinstance(col, np.generic) else col
                        found[key] = list(cats)

    walk(estimator)
    return found
