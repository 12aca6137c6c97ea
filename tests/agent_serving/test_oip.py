"""The Open Inference Protocol v2 JSON codec (no I/O)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from edge_agent.exceptions import BadRequestError
from edge_agent.oip import decode_request, decode_tensor, encode_response


def _req(**tensor: Any) -> bytes:
    return json.dumps({"inputs": [{"name": "x", **tensor}]}).encode()


@pytest.mark.parametrize(
    ("datatype", "data", "dtype"),
    [
        ("BOOL", [True, False], np.bool_),
        ("UINT8", [0, 255], np.uint8),
        ("UINT16", [0, 65535], np.uint16),
        ("UINT32", [0, 2**32 - 1], np.uint32),
        ("UINT64", [0, 2**64 - 1], np.uint64),
        ("INT8", [-128, 127], np.int8),
        ("INT16", [-1, 1], np.int16),
        ("INT32", [-(2**31), 2**31 - 1], np.int32),
        ("INT64", [-(2**63), 2**63 - 1], np.int64),
        ("FP16", [0.5, 1], np.float16),
        ("FP32", [0.25, 1], np.float32),
        ("FP64", [0.1, 2], np.float64),
        ("BYTES", ["a", "béta"], object),
    ],
)
def test_every_datatype_decodes(datatype: str, data: list[Any], dtype: Any) -> None:
    arr = decode_request(_req(shape=[2], datatype=datatype, data=data)).inputs["x"]
    assert arr.dtype == np.dtype(dtype) and arr.shape == (2,)
    assert arr.tolist() == [dtype(v) if dtype is not object else v for v in data]


def test_flat_and_nested_data_give_the_same_tensor() -> None:
    flat = decode_tensor("x", "FP32", [2, 3], [1, 2, 3, 4, 5, 6])
    nested = decode_tensor("x", "FP32", [2, 3], [[1, 2, 3], [4, 5, 6]])
    np.testing.assert_array_equal(flat, nested)
    assert flat.dtype == np.float32 and flat.shape == (2, 3)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[1, 2]", "JSON object"),
        (b"\xff\xfe", "not valid JSON"),
        (b'{"inputs": [{"shape": [1], "datatype": "FP32", "data": [1]}]}', "needs a 'name'"),
        (_req(shape=[1], datatype="FP32"), "has no 'data'"),
        (_req(shape=[2], datatype="FP32", data=[1]), "needs 2 values"),
        (_req(shape=[-1], datatype="FP32", data=[1]), "non-negative"),
        (_req(shape="1", datatype="FP32", data=[1]), "non-negative"),
        (_req(shape=[2], datatype="FP32", data=[True, False]), "found booleans"),
        (_req(shape=[1], datatype="FP32", data=[None]), "mixed or null"),
        (_req(shape=[1], datatype="INT32", data=[1.5]), "not INT32"),
        (_req(shape=[1], datatype="INT8", data=[300]), "out of range"),
        (_req(shape=[1], datatype="UINT8", data=[-1]), "out of range"),
        (_req(shape=[1], datatype="BOOL", data=[1]), "not BOOL"),
        (_req(shape=[1], datatype="BYTES", data=[1]), "must be strings"),
        (_req(shape=[2, 2], datatype="FP32", data=[[1, 2], [3]]), "does not fit"),
        (_req(shape=[1], datatype="FP32", data=[1], parameters={"binary_data_size": 4}),
         "binary tensor data"),
        (json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}],
                     "id": 5}).encode(), "'id' must be a string"),
    ],
)
def test_bad_requests_raise_bad_request(body: bytes, message: str) -> None:
    with pytest.raises(BadRequestError, match=message):
        decode_request(body)


def test_response_shape_and_requested_outputs() -> None:
    outputs: dict[str, np.ndarray] = {"label": np.array([1, 0], np.int64),
               "proba": np.array([[0.25, 0.75], [1.0, 0.0]], np.float32),
               "name": np.array(["a", "b"], dtype=object)}
    doc = json.loads(encode_response("m", 3, outputs, "id-1"))
    assert doc["model_name"] == "m" and doc["model_version"] == "3" and doc["id"] == "id-1"
    by = {o["name"]: o for o in doc["outputs"]}
    assert by["label"] == {"name": "label", "shape": [2], "datatype": "INT64", "data": [1, 0]}
    assert by["proba"]["datatype"] == "FP32" and by["proba"]["data"] == [0.25, 0.75, 1.0, 0.0]
    assert by["name"]["datatype"] == "BYTES" and by["name"]["data"] == ["a", "b"]
    only = json.loads(encode_response("m", 3, outputs, only=["label"]))
    assert [o["name"] for o in only["outputs"]] == ["label"] and "id" not in only
    with pytest.raises(BadRequestError, match="unknown outputs"):
        encode_response("m", 3, outputs, only=["nope"])
