"""What a conversion hands to the registry (and to ``fleetctl models convert``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edge_agent.protocol import TensorSpec


@dataclass(frozen=True)
class ConvertedModel:
    """A checked ONNX model with everything the signed package needs.

    ``framework``: {"name": "scikit-learn" | "lightgbm" | "xgboost" | "onnx", "version": ...,
    "estimator": class name}; ``converter_versions``: library -> version of every tool
    that touched the model; ``opset``: the ai.onnx opset; ``ort_min``: oldest onnxruntime
    that runs it; ``parity``, ``profile``, ``selftest``: JSON-able (see their modules).
    """

    onnx_bytes: bytes
    sha256: str
    framework: dict[str, str]
    converter_versions: dict[str, str]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    opset: int
    ort_min: str
    parity: dict[str, Any]
    profile: dict[str, Any]
    selftest: dict[str, Any]
    sample_sha256: str | None = None
    opsets: dict[str, int] = field(default_factory=dict)  # every domain, "" = ai.onnx


@dataclass(frozen=True)
class ConvertedVariant:
    """An optimized (graph-optimized, dynamically quantized) variant of a model."""

    onnx_bytes: bytes
    sha256: str
    kind: str  # "optimized" or "quantized"
    size_ratio: float  # variant size / original size
    latency_ratio: float  # variant single-row latency / original single-row latency
    parity: dict[str, Any]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    opset: int
    ort_min: str
