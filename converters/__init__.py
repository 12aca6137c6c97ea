"""Models in (scikit-learn, LightGBM, XGBoost via skops or in memory; ONNX), checked ONNX
out, with a parity report, a reference profile and self-test rows for the signed package.

Used by the fleet server (``convert``) and by ``fleetctl models convert`` and notebooks
(``convert_estimator``). Errors are in ``converters.exceptions``.
"""

from __future__ import annotations

from converters.build import convert, convert_estimator, convert_onnx
from converters.result import ConvertedModel, ConvertedVariant
from converters.variants import optimize

__all__ = [
    "ConvertedModel",
    "ConvertedVariant",
    "convert",
    "convert_estimator",
    "convert_onnx",
    "optimize",
]
