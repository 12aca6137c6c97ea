"""The conversion flow: load, convert, check, compare, profile, pick self-test rows."""

from __future__ import annotations

import hashlib
import importlib.metadata
from typing import TYPE_CHECKING, Any

import numpy as np

from converters.checks import DEFAULT_MAX_BYTES, check_onnx, check_size, opsets, ort_min
from converters.exceptions import SampleError
from converters.features import FeatureLayout, align
from converters.loading import detect_format, load_skops
from converters.outputs import map_onto, original_outputs, output_roles
from converters.parity import compare, enforce
from converters.profile import build_profile
from converters.result import ConvertedModel
from converters.runtime import run, session
from converters.sample import DEFAULT_MAX_ROWS, parse_csv, synthesize
from converters.selftest import SELFTEST_ROWS, build_selftest, pick_rows
from converters.specs import numpy_dtype, tensor_specs
from edge_agent.protocol import TensorSpec

if TYPE_CHECKING:
    import onnx
    import pandas as pd

_DISTS = {"sklearn": "scikit-learn", "lightgbm": "lightgbm", "xgboost": "xgboost"}


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def convert(
    data: bytes,
    *,
    filename: str,
    sample: bytes | None = None,
    tolerance: float = 1e-4,
    force: bool = False,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_rows: int = DEFAULT_MAX_ROWS,
) -> ConvertedModel:
    """Convert an uploaded model file (ONNX or skops; pickle is refused) and check it."""
    check_size(data, max_bytes)
    if detect_format(data, filename) == "onnx":
        return convert_onnx(data, sample=sample, max_bytes=max_bytes, max_rows=max_rows)
    return convert_estimator(
        load_skops(data),
        sample,
        tolerance=tolerance,
        force=force,
        max_bytes=max_bytes,
        max_rows=max_rows,
    )


def _sample_frame(
    estimator: Any, sample: Any, max_rows: int
) -> tuple[pd.DataFrame, str, str | None]:
    """(frame, "sample" | "synthetic", sha256 of the sample as given)."""
    import pandas as pd

    if sample is None:
        return synthesize(estimator), "synthetic", None
    if isinstance(sample, (bytes, bytearray)):
        data = bytes(sample)
        return parse_csv(data, max_rows=max_rows), "sample", hashlib.sha256(data).hexdigest()
    if isinstance(sample, pd.DataFrame):
        frame = sample.head(max_rows).reset_index(drop=True)
        frame.columns = pd.Index([str(c) for c in frame.columns])
        digest = hashlib.sha256(frame.to_csv(index=False).encode()).hexdigest()
        return frame, "sample", digest
    if isinstance(sample, np.ndarray):
        arr = np.asarray(sample)[:max_rows]
        if arr.ndim != 2:
            raise SampleError(f"sample array must be 2-D (rows, features), got {arr.shape}")
        names_attr = getattr(estimator, "feature_names_in_", None)
        names = (
            [str(c) for c in names_attr]
            if names_attr is not None and len(names_attr) == arr.shape[1]
            else [f"f{i}" for i in range(arr.shape[1])]
        )
        frame = pd.DataFrame(arr, columns=names).infer_objects()
        return frame, "sample", hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()
    raise TypeError(f"sample must be CSV bytes, a DataFrame or an array, not {type(sample)}")


def _framework(estimator: Any) -> dict[str, str]:
    root = type(estimator).__module__.split(".")[0]
    dist = _DISTS.get(root, root)
    return {"name": dist, "version": _version(dist), "estimator": type(estimator).__name__}


def _finish(
    checked: onnx.ModelProto,
    onnx_bytes: bytes,
    *,
    framework: dict[str, str],
    versions: dict[str, str],
    parity: dict[str, Any],
    profile: dict[str, Any],
    selftest: dict[str, Any],
    sample_sha256: str | None,
) -> ConvertedModel:
    inputs, outputs = tensor_specs(checked)
    found = opsets(checked)
    return ConvertedModel(
        onnx_bytes=onnx_bytes,
        sha256=hashlib.sha256(onnx_bytes).hexdigest(),
        framework=framework,
        converter_versions=versions,
        inputs=inputs,
        outputs=outputs,
        opset=found[""],
        ort_min=ort_min(checked),
        parity=parity,
        profile=profile,
        selftest=selftest,
        sample_sha256=sample_sha256,
        opsets=found,
    )


def convert_estimator(
    estimator: Any,
    sample: bytes | pd.DataFrame | np.ndarray | None = None,
    *,
    tolerance: float = 1e-4,
    force: bool = False,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_rows: int = DEFAULT_MAX_ROWS,
) -> ConvertedModel:
    """Convert a fitted in-memory estimator (scikit-learn, LightGBM, XGBoost) to ONNX.

    ``sample``: CSV bytes with a header, a DataFrame or a 2-D array; without one, rows
    are synthesized (parity and self-test still run; the profile is then empty).
    """
    from converters.boosting import register_boosting_converters
    from converters.sklearn_onnx import to_onnx

    if tolerance < 0:
        raise ValueError("tolerance must be >= 0")
    frame, source, digest = _sample_frame(estimator, sample, max_rows)
    frame, layout = align(estimator, frame)
    original = original_outputs(estimator, layout.original_input(frame))
    original_exact = original_outputs(estimator, layout.original_input(frame, as_float32=False))
    onnx_bytes = to_onnx(estimator, layout).SerializeToString()
    checked = check_onnx(onnx_bytes, max_bytes=max_bytes)
    inputs, outputs = tensor_specs(checked)
    feed = layout.onnx_feed(frame)
    actual = run(session(onnx_bytes), feed)
    expected = map_onto(original, outputs)
    expected_exact = map_onto(original_exact, outputs)
    roles: dict[str, str] = dict(output_roles(list(original), outputs))
    report, row_ok = compare(
        expected,
        actual,
        roles,
        tolerance=tolerance,
        expected_exact=expected_exact,
        tie_scores=original.get("scores"),
        source=source,
    )
    report = enforce(report, force=force)
    versions = {
        "skl2onnx": _version("skl2onnx"),
        "onnx": _version("onnx"),
        "onnxruntime": _version("onnxruntime"),
        "scikit-learn": _version("scikit-learn"),
        **register_boosting_converters(),
    }
    return _finish(
        checked,
        onnx_bytes,
        framework=_framework(estimator),
        versions=versions,
        parity=report,
        # A profile of synthesized rows would raise false drift alarms: none without a sample.
        profile=build_profile(frame, layout, expected, roles) if source == "sample" else {},
        selftest=build_selftest(feed, expected, inputs, outputs, pick_rows(row_ok)),
        sample_sha256=digest,
    )


def _onnx_layout(frame: pd.DataFrame, inputs: tuple[TensorSpec, ...]) -> FeatureLayout:
    """Match a sample's columns to an uploaded ONNX model's inputs."""
    import pandas as pd

    names = tuple(str(c) for c in frame.columns)
    categorical = frozenset(c for c in names if not pd.api.types.is_numeric_dtype(frame[c]))
    if all(s.name in names for s in inputs):
        cols = tuple(s.name for s in inputs)
        return FeatureLayout("columns", cols, categorical & set(cols), True)
    if len(inputs) == 1 and inputs[0].datatype in ("FP32", "FP64") and not categorical:
        width = inputs[0].shape[-1] if len(inputs[0].shape) == 2 else -1
        if width not in (-1, len(names)):
            raise SampleError(
                f"sample has {len(names)} columns; input {inputs[0].name!r} takes {width}"
            )
        return FeatureLayout("matrix", names, frozenset(), False, input_name=inputs[0].name)
    raise SampleError(
        "sample columns do not match the model inputs "
        f"{[s.name for s in inputs]}: use one column per input, named like it, or numeric "
        "columns for a single matrix input"
    )


def _synthetic_feed(inputs: tuple[TensorSpec, ...], rows: int = 8) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feed: dict[str, np.ndarray] = {}
    for spec in inputs:
        shape = (
            tuple((rows if i == 0 else 1) if d < 0 else d for i, d in enumerate(spec.shape)) or ()
        )
        if spec.datatype == "BYTES":
            feed[spec.name] = np.full(shape, "", dtype=object)
        elif spec.datatype.startswith("FP"):
            feed[spec.name] = rng.standard_normal(shape).astype(numpy_dtype(spec.datatype))
        else:
            feed[spec.name] = np.zeros(shape, dtype=numpy_dtype(spec.datatype))
    return feed


def _feed_for(
    layout: FeatureLayout, frame: pd.DataFrame, inputs: tuple[TensorSpec, ...]
) -> dict[str, np.ndarray]:
    feed = layout.onnx_feed(frame)
    types = {s.name: s.datatype for s in inputs}
    return {
        n: a if types[n] == "BYTES" else a.astype(numpy_dtype(types[n])) for n, a in feed.items()
    }


def convert_onnx(
    data: bytes,
    *,
    sample: bytes | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_rows: int = DEFAULT_MAX_ROWS,
) -> ConvertedModel:
    """Check an uploaded ONNX model and run it once to prove it loads. There is no original
    to compare with, so parity compares nothing and the self-test expects onnxruntime's own
    outputs."""
    checked = check_onnx(data, max_bytes=max_bytes)
    inputs, outputs = tensor_specs(checked)
    sess = session(data)
    profile: dict[str, Any] = {}
    roles = {
        s.name: ("label" if s.datatype in ("INT64", "INT32", "BYTES") else "values")
        for s in outputs
    }
    if sample is not None:
        frame = parse_csv(sample, max_rows=max_rows)
        layout = _onnx_layout(frame, inputs)
        feed = _feed_for(layout, frame, inputs)
        actual = run(sess, feed)
        profile = build_profile(frame, layout, actual, roles)
        source, digest = "sample", hashlib.sha256(sample).hexdigest()
    else:
        feed = _synthetic_feed(inputs)
        actual = run(sess, feed)
        source, digest = "synthetic", None
    rows = next(iter(feed.values())).shape[0] if feed else 0
    parity = {
        "compared": False,
        "source": source,
        "rows": int(rows),
        "passed": True,
        "forced": False,
        "reason": "ONNX uploaded: no original model to compare with; ran once in onnxruntime",
        "outputs": {},
        "failures": [],
    }
    picked = np.arange(min(rows, SELFTEST_ROWS))
    producer = f"{checked.producer_name} {checked.producer_version}".strip()
    return _finish(
        checked,
        data,
        framework={"name": "onnx", "version": producer or "unknown", "estimator": "onnx"},
        versions={"onnx": _version("onnx"), "onnxruntime": _version("onnxruntime")},
        parity=parity,
        profile=profile,
        selftest=build_selftest(feed, actual, inputs, outputs, picked),
        sample_sha256=digest,
    )
