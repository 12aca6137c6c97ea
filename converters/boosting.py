"""LightGBM and XGBoost through onnxmltools, registered with skl2onnx so that boosters
also convert inside scikit-learn pipelines. Both libraries are optional."""

from __future__ import annotations

import importlib.metadata

_registered: dict[str, str] | None = None


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def register_boosting_converters() -> dict[str, str]:
    """Register the converters of the installed boosting libraries (once); return the
    versions of what was registered (library and onnxmltools)."""
    global _registered
    if _registered is not None:
        return _registered
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import (
        calculate_linear_classifier_output_shapes,
        calculate_linear_regressor_output_shapes,
    )

    found: dict[str, str] = {}
    classifier_options = {"nocl": [True, False], "zipmap": [True, False, "columns"]}
    try:
        from lightgbm import LGBMClassifier, LGBMRegressor
        from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm
    except ImportError:
        pass
    else:
        update_registered_converter(
            LGBMClassifier,
            "LightGbmLGBMClassifier",
            calculate_linear_classifier_output_shapes,
            convert_lightgbm,
            options=classifier_options,
        )
        update_registered_converter(
            LGBMRegressor,
            "LightGbmLGBMRegressor",
            calculate_linear_regressor_output_shapes,
            convert_lightgbm,
            options={"split": None},
        )
        found["lightgbm"] = _version("lightgbm")
    try:
        from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost
        from xgboost import XGBClassifier, XGBRegressor
    except ImportError:
        pass
    else:
        update_registered_converter(
            XGBClassifier,
            "XGBoostXGBClassifier",
            calculate_linear_classifier_output_shapes,
            convert_xgboost,
            options=classifier_options,
        )
        update_registered_converter(
            XGBRegressor,
            "XGBoostXGBRegressor",
            calculate_linear_regressor_output_shapes,
            convert_xgboost,
        )
        found["xgboost"] = _version("xgboost")
    if found:
        found["onnxmltools"] = _version("onnxmltools")
    _registered = found
    return found
