"""Open Inference Protocol v2 (KServe v2) JSON codec: bytes in, arrays out, and back.

No I/O here. Requests look like::

    {"id": "42", "inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32",
                             "data": [0.1, 0.2, 0.3, 0.4]}],
     "outputs": [{"name": "label"}]}                       # optional: which outputs

``data`` may be flat (row-major) or nested; BYTES tensors carry strings. Binary tensor data
(the ``binary_data_size`` extension) is not supported.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_agent.exceptions import BadRequestError
from edge_agent.runtime import OIP_TO_NUMPY

_NUMPY_TO_OIP: dict[np.dtype[Any], str] = {dt: name for name, dt in OIP_TO_NUMPY.items()}
_ACCEPTED_KINDS = {"f": "fiu", "i": "iu", "u": "iu", "b": "b"}  # JSON values each dtype takes


@dataclass(frozen=True)
class InferRequest:
    inputs: dict[str, np.ndarray]
    id: str | None = None
    outputs: tuple[str, ...] | None = None  # None: all outputs


def datatype_of(arr: np.ndarray) -> str:
    name = _NUMPY_TO_OIP.get(arr.dtype)
    if name is None:
        if arr.dtype.kind in "UO":
            return "BYTES"
        raise BadRequestError(f"dtype {arr.dtype} has no Open Inference Protocol datatype")
    return name


def decode_tensor(name: str, datatype: Any, shape: Any, data: Any) -> np.ndarray:
    """One OIP tensor as an array of ``datatype`` shaped ``shape``; ``BadRequestError``."""
    dtype = OIP_TO_NUMPY.get(datatype) if isinstance(datatype, str) else None
    if dtype is None:
        raise BadRequestError(
            f"input {name!r}: datatype {datatype!r} is not one of {sorted(OIP_TO_NUMPY)}"
        )
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise BadRequestError(f"input {name!r}: shape must be a list of non-negative integers")
    if not isinstance(data, list):
        data = [data]
    try:
        if dtype.kind == "O":
            arr = np.asarray(data, dtype=object)
            if not all(isinstance(v, str) for v in arr.flat):
                raise BadRequestError(f"input {name!r}: BYTES data must be strings")
        else:
            arr = np.asarray(data)
            if dtype.kind in "iu" and arr.dtype.kind in "fO":
                arr = _big_ints(name, data, dtype, datatype, arr)
            if arr.dtype.kind not in _ACCEPTED_KINDS[dtype.kind]:
                raise BadRequestError(
                    f"input {name!r}: data is not {datatype} (found {_json_kind(arr)})"
                )
            if arr.dtype != dtype:
                if dtype.kind in "iu" and arr.size:
                    info = np.iinfo(dtype)
                    if arr.min() < info.min or arr.max() > info.max:
                        raise BadRequestError(f"input {name!r}: values out of range for {datatype}")
                arr = arr.astype(dtype)
    except (ValueError, TypeError, OverflowError) as e:  # ragged nesting, odd values
        raise BadRequestError(f"input {name!r}: data does not fit {datatype}: {e}") from e
    expected = math.prod(shape)
    if arr.size != expected:
        raise BadRequestError(
            f"input {name!r}: shape {shape} needs {expected} values, data has {arr.size}"
        )
    return arr.reshape(shape)


def _big_ints(
    name: str, data: list[Any], dtype: np.dtype[Any], datatype: str, inferred: np.ndarray
) -> np.ndarray:
    """Slow path: integers numpy did not keep as integers (beyond int64, e.g. UINT64)."""
    values = np.asarray(data, dtype=object)
    if not all(type(v) is int for v in values.flat):
        return inferred
    try:
        return np.array(values.ravel().tolist(), dtype=dtype).reshape(values.shape)
    except OverflowError as e:
        raise BadRequestError(f"input {name!r}: values out of range for {datatype}") from e


def _json_kind(arr: np.ndarray) -> str:
    return {"b": "booleans", "U": "strings", "O": "mixed or null values"}.get(
        arr.dtype.kind, "numbers"
    )


def decode_request(body: bytes) -> InferRequest:
    """Parse an OIP inference request; ``BadRequestError`` says what is wrong."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequestError(f"request body is not valid JSON: {e}") from e
    if not isinstance(doc, dict):
        raise BadRequestError("request body must be a JSON object")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise BadRequestError("request needs a non-empty 'inputs' list")
    inputs: dict[str, np.ndarray] = {}
    for item in raw_inputs:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise BadRequestError("each input needs a 'name'")
        name = item["name"]
        if name in inputs:
            raise BadRequestError(f"input {name!r} appears twice")
        params = item.get("parameters")
        if isinstance(params, dict) and "binary_data_size" in params:
            raise BadRequestError("binary tensor data is not supported; send JSON 'data'")
        if "data" not in item:
            raise BadRequestError(f"input {name!r} has no 'data'")
        inputs[name] = decode_tensor(name, item.get("datatype"), item.get("shape"), item["data"])
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequestError("'id' must be a string")
    wanted: tuple[str, ...] | None = None
    raw_outputs = doc.get("outputs")
    if raw_outputs is not None:
        if not isinstance(raw_outputs, list) or not all(
            isinstance(o, dict) and isinstance(o.get("name"), str) for o in raw_outputs
        ):
            raise BadRequestError("'outputs' must be a list of {\"name\": ...}")
        wanted = tuple(o["name"] for o in raw_outputs)
    return InferRequest(inputs, request_id, wanted)


def encode_tensor(name: str, arr: np.ndarray) -> dict[str, Any]:
    return {
        "name": name,
        "shape": list(arr.shape),
        "datatype": datatype_of(arr),
        "data": arr.ravel().tolist(),
    }


def encode_response(
    model_name: str,
    model_version: int,
    outputs: Mapping[str, np.ndarray],
    request_id: str | None = None,
    only: Iterable[str] | None = None,
) -> bytes:
    """The OIP response document; ``only`` picks outputs (``BadRequestError`` if unknown)."""
    if only is not None:
        names = list(only)
        unknown = [n for n in names if n not in outputs]
        if unknown:
            raise BadRequestError(f"unknown outputs {unknown}; the model has {sorted(outputs)}")
    else:
        names = list(outputs)
    doc: dict[str, Any] = {"model_name": model_name, "model_version": str(model_version)}
    if request_id is not None:
        doc["id"] = request_id
    doc["outputs"] = [encode_tensor(n, outputs[n]) for n in names]
    return json.dumps(doc, separators=(",", ":")).encode()


def tensors_from_oip(tensors: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """``{name: {"datatype", "shape", "data"}}`` (the package self-test form) as arrays."""
    out: dict[str, np.ndarray] = {}
    for name, t in tensors.items():
        if not isinstance(t, dict):
            raise BadRequestError(f"tensor {name!r} must be an object")
        out[name] = decode_tensor(name, t.get("datatype"), t.get("shape"), t.get("data"))
    return out
