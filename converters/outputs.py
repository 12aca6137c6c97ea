"""The original model's outputs, by role, mapped onto the converted model's output names."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from converters.exceptions import SampleError, UnsupportedModelError
from converters.specs import numpy_dtype
from edge_agent.protocol import TensorSpec

Role = Literal["label", "scores", "values"]


def _dense(a: Any) -> np.ndarray:
    return np.asarray(a.toarray() if hasattr(a, "toarray") else a)


def is_classifier(estimator: Any) -> bool:
    return hasattr(estimator, "classes_") and hasattr(estimator, "predict")


def is_outlier_detector(estimator: Any) -> bool:
    from sklearn.base import is_outlier_detector as check

    return bool(check(estimator))


def original_outputs(estimator: Any, x: Any) -> dict[Role, np.ndarray]:
    """Run the original model; a failure here is the sample's fault, so say so."""
    try:
        if is_classifier(estimator):
            out: dict[Role, np.ndarray] = {"label": _dense(estimator.predict(x))}
            if hasattr(estimator, "predict_proba"):
                out["scores"] = _dense(estimator.predict_proba(x))
            elif hasattr(estimator, "decision_function"):
                out["scores"] = _dense(estimator.decision_function(x))
            return out
        if is_outlier_detector(estimator):
            return {
                "label": _dense(estimator.predict(x)),
                "scores": _dense(estimator.decision_function(x)),
            }
        if hasattr(estimator, "predict"):
            return {"values": _dense(estimator.predict(x))}
        return {"values": _dense(estimator.transform(x))}
    except Exception as e:
        raise SampleError(
            f"the original {type(estimator).__name__} failed on the sample rows: {e}"
        ) from e


def output_roles(roles: list[Role], outputs: tuple[TensorSpec, ...]) -> dict[str, Role]:
    """ONNX output name -> role, by position (skl2onnx emits label first, then scores)."""
    if len(outputs) != len(roles):
        raise UnsupportedModelError(
            f"converted model has outputs {[o.name for o in outputs]} but the original "
            f"gives {roles}; cannot check parity"
        )
    return {o.name: r for o, r in zip(outputs, roles, strict=True)}


def map_onto(
    original: dict[Role, np.ndarray], outputs: tuple[TensorSpec, ...]
) -> dict[str, np.ndarray]:
    """The original outputs shaped and typed like the ONNX outputs of the same role."""
    roles = output_roles(list(original), outputs)
    mapped: dict[str, np.ndarray] = {}
    for spec in outputs:
        value = original[roles[spec.name]]
        n = value.shape[0]
        fixed = [d for d in spec.shape[1:] if d > 0]
        width = int(np.prod(fixed)) if fixed else None
        if value.ndim == 1 and width == 2 and roles[spec.name] == "scores":
            value = np.stack([-value, value], axis=1)  # binary decision function
        value = value.reshape(n, -1) if len(spec.shape) >= 2 else value.reshape(n)
        if spec.datatype == "BYTES":
            value = np.array([str(v) for v in value.reshape(-1)], dtype=object).reshape(value.shape)
        elif roles[spec.name] == "label":
            value = value.astype(numpy_dtype(spec.datatype))
        mapped[spec.name] = value
    return mapped
