"""ONNX tensor types as Open Inference Protocol tensor specs and JSON tensors."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto

from edge_agent.protocol import TensorSpec

# ONNX element type -> (OIP datatype, numpy dtype)
_ELEM: dict[int, tuple[str, Any]] = {
    TensorProto.FLOAT: ("FP32", np.float32),
    TensorProto.DOUBLE: ("FP64", np.float64),
    TensorProto.FLOAT16: ("FP16", np.float16),
    TensorProto.INT64: ("INT64", np.int64),
    TensorProto.INT32: ("INT32", np.int32),
    TensorProto.INT16: ("INT16", np.int16),
    TensorProto.INT8: ("INT8", np.int8),
    TensorProto.UINT8: ("UINT8", np.uint8),
    TensorProto.UINT16: ("UINT16", np.uint16),
    TensorProto.UINT32: ("UINT32", np.uint32),
    TensorProto.UINT64: ("UINT64", np.uint64),
    TensorProto.BOOL: ("BOOL", np.bool_),
    TensorProto.STRING: ("BYTES", np.object_),
}


def _spec(value: onnx.ValueInfoProto) -> TensorSpec:
    tt = value.type.tensor_type
    if tt.elem_type not in _ELEM:
        raise RuntimeError(f"{value.name}: unsupported element type {tt.elem_type}")
    dims = tuple(
        int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else -1
        for d in tt.shape.dim
    )
    return TensorSpec(value.name, _ELEM[tt.elem_type][0], dims)


def tensor_specs(model: onnx.ModelProto) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """(inputs, outputs) of a checked model; initializers listed as inputs are left out."""
    inits = {t.name for t in model.graph.initializer}
    inputs = tuple(_spec(v) for v in model.graph.input if v.name not in inits)
    outputs = tuple(_spec(v) for v in model.graph.output)
    return inputs, outputs


def numpy_dtype(datatype: str) -> Any:
    for oip, dt in _ELEM.values():
        if oip == datatype:
            return dt
    raise RuntimeError(f"unknown OIP datatype {datatype}")


def oip_datatype(arr: np.ndarray) -> str:
    if arr.dtype.kind in "OUS":
        return "BYTES"
    for oip, dt in _ELEM.values():
        if dt is not np.object_ and arr.dtype == np.dtype(dt):
            return oip
    raise RuntimeError(f"no OIP datatype for numpy dtype {arr.dtype}")


def oip_tensor(arr: np.ndarray, datatype: str | None = None) -> dict[str, Any]:
    """An OIP JSON tensor: datatype, shape and the data as a flat list (strings as str)."""
    datatype = datatype or oip_datatype(arr)
    if datatype == "BYTES":
        flat: list[Any] = [
            v.decode() if isinstance(v, bytes) else str(v) for v in arr.reshape(-1).tolist()
        ]
    else:
        flat = np.asarray(arr, dtype=numpy_dtype(datatype)).reshape(-1).tolist()
    return {"datatype": datatype, "shape": [int(d) for d in arr.shape], "data": flat}
