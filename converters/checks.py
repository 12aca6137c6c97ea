"""Checks an ONNX model must pass before it is signed and shipped to agents.

Verification only: bytes in, a checked ``onnx.ModelProto`` out, or an exception. No I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import onnx
from onnx import TensorProto

from converters.exceptions import ModelCheckError, UnsafeModelError

DEFAULT_MAX_BYTES = 200 * 1024 * 1024

# The oldest onnxruntime an agent may run is 1.17 (pyproject: onnxruntime>=1.17). It
# implements ai.onnx opset 20, ai.onnx.ml opset 4 and IR version 9; a model stamped newer
# would fail to load on such a device, so the server refuses it up front. Raise these
# three together with the agents' onnxruntime floor.
AGENT_ORT_FLOOR = "1.17"
MAX_AI_ONNX_OPSET = 20
MAX_ML_OPSET = 4
MAX_IR_VERSION = 9

ALLOWED_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})

# onnxruntime release -> (ai.onnx opset, ai.onnx.ml opset, IR version) it implements
# (onnxruntime docs, "Compatibility"). Used to compute a model's ``ort_min``.
ORT_OPSET_TABLE: tuple[tuple[str, int, int, int], ...] = (
    ("1.10", 15, 2, 7),
    ("1.12", 15, 2, 7),
    ("1.13", 17, 3, 8),
    ("1.14", 18, 3, 8),
    ("1.15", 19, 3, 9),
    ("1.17", 20, 4, 9),
    ("1.18", 21, 4, 10),
)


def check_size(data: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
    # Guards against memory exhaustion on the server and devices with small disks.
    if len(data) > max_bytes:
        raise UnsafeModelError(
            f"model file is {len(data)} bytes, more than the limit of {max_bytes}",
            check="size",
        )


def check_onnx(data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> onnx.ModelProto:
    """Parse and check an ONNX model; return it or raise naming the check and the node."""
    check_size(data, max_bytes)
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as e:
        raise ModelCheckError("parse", f"not a valid ONNX protobuf: {e}") from e
    check_model(model)
    return model


def check_model(model: onnx.ModelProto) -> None:
    """Run every check on a parsed model (the order matters: unsafe things first)."""
    check_no_external_data(model)
    check_domains(model)
    check_opsets(model)
    _run_onnx_checker(model)
    _run_shape_inference(model)
    check_io_types(model)


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _graphs(g)


def _all_nodes(model: onnx.ModelProto) -> Iterator[onnx.NodeProto]:
    for g in _graphs(model.graph):
        yield from g.node
    for fn in model.functions:
        yield from fn.node


def _node_name(node: onnx.NodeProto) -> str:
    return node.name or f"<unnamed {node.domain + '.' if node.domain else ''}{node.op_type}>"


def _tensors(model: onnx.ModelProto) -> Iterator[tuple[str, TensorProto]]:
    for g in _graphs(model.graph):
        for t in g.initializer:
            yield t.name, t
        for st in g.sparse_initializer:
            yield st.values.name, st.values
            yield st.values.name, st.indices
    for node in _all_nodes(model):
        for attr in node.attribute:
            owner = f"{_node_name(node)}.{attr.name}"
            if attr.HasField("t"):
                yield owner, attr.t
            for t in attr.tensors:
                yield owner, t
            if attr.HasField("sparse_tensor"):
                yield owner, attr.sparse_tensor.values
                yield owner, attr.sparse_tensor.indices
            for st in attr.sparse_tensors:
                yield owner, st.values
                yield owner, st.indices


def check_no_external_data(model: onnx.ModelProto) -> None:
    # Guards against path traversal and file reads: external data names a file path that
    # onnxruntime would open on the device (or the checker on the server).
    for owner, tensor in _tensors(model):
        if tensor.data_location == TensorProto.EXTERNAL or len(tensor.external_data) > 0:
            raise UnsafeModelError(
                f"tensor {owner!r} keeps its data in an external file; embed all weights "
                "in the .onnx file (onnx.save without save_as_external_data)",
                check="external_data",
                node=owner,
            )


def check_domains(model: onnx.ModelProto) -> None:
    # Guards against custom operators: a custom domain needs a native library on the
    # device, which is code we did not ship or review.
    for imp in model.opset_import:
        if imp.domain not in ALLOWED_DOMAINS:
            raise UnsafeModelError(
                f"opset domain {imp.domain!r} is not allowed (only ai.onnx and ai.onnx.ml)",
                check="domains",
            )
    for node in _all_nodes(model):
        if node.domain not in ALLOWED_DOMAINS:
            raise UnsafeModelError(
                f"node {_node_name(node)!r} (op {node.op_type!r}) uses domain "
                f"{node.domain!r}; only ai.onnx and ai.onnx.ml operators are allowed",
                check="domains",
                node=_node_name(node),
            )


def opsets(model: onnx.ModelProto) -> dict[str, int]:
    """Opset versions by domain, with "ai.onnx" folded into ""."""
    out: dict[str, int] = {}
    for imp in model.opset_import:
        domain = "" if imp.domain == "ai.onnx" else imp.domain
        out[domain] = max(out.get(domain, 0), int(imp.version))
    return out


def check_opsets(model: onnx.ModelProto) -> None:
    # Guards against shipping a model the oldest supported agent runtime cannot load.
    found = opsets(model)
    if "" not in found:
        raise ModelCheckError("opset", "the model imports no ai.onnx opset")
    if found[""] > MAX_AI_ONNX_OPSET:
        raise ModelCheckError(
            "opset",
            f"ai.onnx opset {found['']} is newer than {MAX_AI_ONNX_OPSET}, the newest that "
            f"onnxruntime {AGENT_ORT_FLOOR} (the agents' floor) runs; re-export with "
            f"opset <= {MAX_AI_ONNX_OPSET}",
        )
    if found.get("ai.onnx.ml", 0) > MAX_ML_OPSET:
        raise ModelCheckError(
            "opset",
            f"ai.onnx.ml opset {found['ai.onnx.ml']} is newer than {MAX_ML_OPSET} "
            f"(onnxruntime {AGENT_ORT_FLOOR})",
        )
    if model.ir_version > MAX_IR_VERSION:
        raise ModelCheckError(
            "ir_version",
            f"IR version {model.ir_version} is newer than {MAX_IR_VERSION} "
            f"(onnxruntime {AGENT_ORT_FLOOR})",
        )


def ort_min(model: onnx.ModelProto) -> str:
    """The oldest onnxruntime (not older than the agents' floor) that runs ``model``."""
    found = opsets(model)
    for version, ai, ml, ir in ORT_OPSET_TABLE:
        if found.get("", 0) <= ai and found.get("ai.onnx.ml", 0) <= ml and model.ir_version <= ir:
            return max(version, AGENT_ORT_FLOOR, key=_version_key)
    raise RuntimeError("check_opsets must run before ort_min")


def _version_key(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in v.split("."))


_NODE_RE = re.compile(r"(?:node|Node)[^\n]*?Name:\s*([^\s]+)")


def _run_onnx_checker(model: onnx.ModelProto) -> None:
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        m = _NODE_RE.search(str(e))
        raise ModelCheckError("onnx_checker", str(e).strip(), node=m.group(1) if m else None) from e


def _run_shape_inference(model: onnx.ModelProto) -> None:
    try:
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as e:
        m = _NODE_RE.search(str(e))
        raise ModelCheckError(
            "shape_inference", str(e).strip(), node=m.group(1) if m else None
        ) from e


def check_io_types(model: onnx.ModelProto) -> None:
    # Agents speak the Open Inference Protocol: every input and output must be a tensor.
    for kind, values in (("input", model.graph.input), ("output", model.graph.output)):
        for v in values:
            if not v.type.HasField("tensor_type"):
                raise ModelCheckError(
                    "io_types",
                    f"graph {kind} {v.name!r} is not a tensor (a ZipMap sequence of maps?); "
                    "convert classifiers with zipmap disabled",
                    node=v.name,
                )
