"""scikit-learn estimators (and boosters registered by ``converters.boosting``) to ONNX."""

from __future__ import annotations

from typing import Any

import onnx

from converters.boosting import register_boosting_converters
from converters.exceptions import UnsupportedModelError
from converters.features import FeatureLayout

# Opsets the converters emit: well inside what onnxruntime 1.17 (the agents' floor) runs.
TARGET_OPSET = 17
TARGET_ML_OPSET = 3  # IsolationForest needs ai.onnx.ml 3; TreeEnsemble v3 runs everywhere


def _children(obj: Any) -> list[Any]:
    """Sub-estimators of the meta-estimators skl2onnx converts part by part."""
    out: list[Any] = [step for _, step in getattr(obj, "steps", None) or []]
    for attr in ("transformers_", "transformer_list"):
        out.extend(item[1] for item in getattr(obj, attr, None) or [])
    members = getattr(obj, "estimators_", None)
    if isinstance(members, list) and all(hasattr(m, "fit") for m in members):
        out.extend(members)
    final = getattr(obj, "final_estimator_", None)
    if final is not None:
        out.append(final)
    return [o for o in out if not isinstance(o, str) and o is not None]


def walk(obj: Any) -> list[Any]:
    found = [obj]
    for child in _children(obj):
        found.extend(walk(child))
    return found


def _supported_types() -> dict[type, str]:
    from skl2onnx._supported_operators import sklearn_operator_name_map

    return dict(sklearn_operator_name_map)


def find_unsupported(estimator: Any) -> Any | None:
    """The first (outermost) estimator no registered converter handles, if any."""
    supported = _supported_types()
    for obj in walk(estimator):
        if type(obj) not in supported:
            return obj
    return None


def _options(estimator: Any) -> dict[Any, Any]:
    """zipmap off for every classifier type that offers it: outputs stay plain tensors."""
    from skl2onnx.common._registration import get_converter

    supported = _supported_types()
    options: dict[Any, Any] = {}
    for obj in walk(estimator):
        alias = supported.get(type(obj))
        if alias is None:
            continue
        allowed = get_converter(alias).get_allowed_options() or {}
        if "zipmap" in allowed:
            options[type(obj)] = {"zipmap": False}
    return options


def to_onnx(estimator: Any, layout: FeatureLayout) -> onnx.ModelProto:
    """Convert a fitted estimator; raise UnsupportedModelError naming what cannot be."""
    from skl2onnx import convert_sklearn
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    register_boosting_converters()
    name = type(estimator).__name__
    try:
        check_is_fitted(estimator)
    except NotFittedError as e:
        raise UnsupportedModelError(f"{name} is not fitted", estimator=name) from e
    except TypeError as e:
        raise UnsupportedModelError(
            f"{name} is not a scikit-learn estimator", estimator=name
        ) from e
    bad = find_unsupported(estimator)
    if bad is not None:
        bad_name = f"{type(bad).__module__}.{type(bad).__qualname__}"
        raise UnsupportedModelError(
            f"no ONNX converter for {bad_name}"
            + (f" (inside {name})" if bad is not estimator else "")
            + "; supported: scikit-learn estimators that skl2onnx converts, LightGBM, XGBoost",
            estimator=bad_name,
        )
    try:
        model: onnx.ModelProto = convert_sklearn(
            estimator,
            initial_types=layout.initial_types(),
            target_opset={"": TARGET_OPSET, "ai.onnx.ml": TARGET_ML_OPSET},
            options=_options(estimator) or None,
        )
    except Exception as e:
        raise UnsupportedModelError(
            f"skl2onnx could not convert {name}: {type(e).__name__}: {e}", estimator=name
        ) from e
    return model
