"""Loading ONNX models into onnxruntime and holding the ones being served.

``load_model`` reads the file once and works on those bytes only: it checks their sha256
against the signed package, scans them for what the agent refuses (external data, custom
op domains, model-local functions, an embedded ``ort_config``), and gives the same bytes to
onnxruntime. Hashing, scanning and loading one buffer leaves no window in which the file
on disk could be swapped between the check and the load.

Why a scan of our own: the agent cannot import ``onnx``, and onnxruntime does not refuse
these by itself. Measured with onnxruntime 1.32: a model loaded *from bytes* resolves
external-data paths against the process's working directory, and a node in the built-in
``com.microsoft`` domain loads even when the model does not declare that domain.

Memory: every session allocates from one shared CPU arena with a hard cap (``max_mem``,
registered once per process, see ``configure_memory``); a request that needs more fails
with an ``InferenceError`` instead of taking the device down. Constant folding at load time
does not go through that arena, so it is capped too
(``optimization.constant_folding_max_output_size_in_bytes``).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from edge_agent.exceptions import (
    BadRequestError,
    InferenceError,
    ModelLoadError,
    UnknownModelError,
    UpdateError,
)
from edge_agent.protocol import ModelPackage, TensorSpec

ALLOWED_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})
DEFAULT_MAX_MODEL_MEMORY = 512 * 1024 * 1024  # shared by all sessions of the process
CONSTANT_FOLDING_MAX_BYTES = 16 * 1024 * 1024
MAX_SUBGRAPH_DEPTH = 8

# OIP datatype <-> numpy dtype <-> onnxruntime type string.
OIP_TO_NUMPY: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
ORT_TO_OIP = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


class ModelRefusedError(ModelLoadError, UpdateError):
    """A model file refused before or while loading.

    It is a ``ModelLoadError`` and an ``UpdateError`` at once, so the update lifecycle
    reports its ``reason`` (``hash_mismatch``, ``unsafe_model``, ``incompatible``,
    ``load_failed``) instead of ``internal``.
    """


@dataclass(frozen=True)
class Limits:
    """Per-request input limits, checked before onnxruntime sees the data."""

    max_batch_rows: int = 10_000
    max_input_bytes: int = 16 * 1024 * 1024


# -- the shared, capped CPU arena -----------------------------------------------------------
_arena_lock = threading.Lock()
_arena_max_bytes: int | None = None


def configure_memory(max_bytes: int = DEFAULT_MAX_MODEL_MEMORY) -> int:
    """Register the process-wide capped CPU arena (once); returns the cap in force.

    Call before the first ``load_model`` to choose the cap (``load_model`` registers the
    default otherwise). Asking for another cap later raises ``RuntimeError``: onnxruntime's
    environment allocators live as long as the process.
    """
    global _arena_max_bytes
    with _arena_lock:
        if _arena_max_bytes is None:
            cfg = ort.OrtArenaCfg(
                {"max_mem": int(max_bytes), "arena_extend_strategy": 1}  # kSameAsRequested
            )
            info = ort.OrtMemoryInfo(
                "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
            )
            ort.create_and_register_allocator(info, cfg)
            _arena_max_bytes = int(max_bytes)
        elif _arena_max_bytes != max_bytes:
            raise RuntimeError(f"model memory is already capped at {_arena_max_bytes} bytes")
        return _arena_max_bytes


def _ensure_arena() -> None:
    if _arena_max_bytes is None:
        with contextlib.suppress(RuntimeError):  # another thread registered it first
            configure_memory()


def session_options() -> ort.SessionOptions:
    """The agent's onnxruntime session options (see the module docstring)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1  # best for single rows; one request per HTTP thread
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 4  # errors reach the caller as exceptions, not stderr
    # Guards against a model exhausting memory at run time: allocate from the capped arena.
    so.add_session_config_entry("session.use_env_allocators", "1")
    # Guards against a model exhausting memory at load time through constant folding.
    so.add_session_config_entry(
        "optimization.constant_folding_max_output_size_in_bytes", str(CONSTANT_FOLDING_MAX_BYTES)
    )
    # Only the ONNX protobuf format: never the ORT flatbuffer format with its own rules.
    so.add_session_config_entry("session.load_model_format", "ONNX")
    # No register_custom_ops_library(): custom-op shared libraries are never loaded.
    return so


# -- the model scan (bytes in, refusal out; no I/O) -----------------------------------------
def _refuse(message: str) -> ModelRefusedError:
    return ModelRefusedError("unsafe_model", message)


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise _refuse("malformed protobuf (varint too long)")


def _fields(buf: bytes, pos: int, end: int) -> Any:
    """Yield ``(field, wire, start_or_value, stop)`` for each field of one message."""
    while pos < end:
        key, pos = _varint(buf, pos)
        wire = key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield key >> 3, 0, value, pos
        elif wire == 2:
            n, pos = _varint(buf, pos)
            if pos + n > end:
                raise _refuse("malformed protobuf (field runs past its message)")
            yield key >> 3, 2, pos, pos + n
            pos += n
        elif wire == 5:
            pos += 4
        elif wire == 1:
            pos += 8
        else:
            raise _refuse(f"malformed protobuf (wire type {wire})")
    if pos != end:
        raise _refuse("malformed protobuf (truncated)")


def _text(buf: bytes, start: int, stop: int) -> str:
    try:
        return buf[start:stop].decode("utf-8")
    except UnicodeDecodeError as e:
        raise _refuse("malformed protobuf (string is not UTF-8)") from e


def _scan_tensor(buf: bytes, start: int, stop: int) -> None:
    for field, wire, a, _ in _fields(buf, start, stop):
        # Guards against external data: a path that would make onnxruntime read any file.
        if field == 13 or (field == 14 and (wire != 0 or a != 0)):
            raise _refuse("tensors with external data are refused")


def _scan_sparse(buf: bytes, start: int, stop: int) -> None:
    for field, wire, a, b in _fields(buf, start, stop):
        if field in (1, 2) and wire == 2:
            _scan_tensor(buf, a, b)


def _scan_attribute(buf: bytes, pos: int, end: int, depth: int) -> None:
    # Hand-rolled loop: tree ensembles hold hundreds of thousands of unpacked scalars here.
    while pos < end:
        key = buf[pos]
        if key < 0x80:
            pos += 1
        else:
            key, pos = _varint(buf, pos)
        wire = key & 7
        if wire == 5:
            pos += 4
            while pos < end and buf[pos] == key:  # a run of unpacked floats
                pos += 5
        elif wire == 0:
            while buf[pos] & 0x80:
                pos += 1
            pos += 1
        elif wire == 2:
            n, pos = _varint(buf, pos)
            if pos + n > end:
                raise _refuse("malformed protobuf (field runs past its message)")
            field = key >> 3
            if field in (5, 10):  # t, tensors
                _scan_tensor(buf, pos, pos + n)
            elif field in (6, 11):  # g, graphs
                _scan_graph(buf, pos, pos + n, depth + 1)
            elif field in (22, 23):  # sparse_tensor, sparse_tensors
                _scan_sparse(buf, pos, pos + n)
            pos += n
        elif wire == 1:
            pos += 8
        else:
            raise _refuse(f"malformed protobuf (wire type {wire})")
    if pos != end:
        raise _refuse("malformed protobuf (truncated)")


def _scan_node(buf: bytes, start: int, stop: int, depth: int) -> None:
    for field, wire, a, b in _fields(buf, start, stop):
        if field == 7:
            # Guards against custom ops: only the standard ONNX and ONNX-ML domains run.
            domain = _text(buf, a, b) if wire == 2 else "?"
            if domain not in ALLOWED_DOMAINS:
                raise _refuse(f"operator domain {domain!r} is not allowed")
        elif field == 5 and wire == 2:
            _scan_attribute(buf, a, b, depth)


def _scan_graph(buf: bytes, start: int, stop: int, depth: int) -> None:
    # Guards against stack exhaustion through deeply nested subgraphs.
    if depth > MAX_SUBGRAPH_DEPTH:
        raise _refuse("subgraphs nested too deep")
    for field, wire, a, b in _fields(buf, start, stop):
        if wire != 2:
            continue
        if field == 1:
            _scan_node(buf, a, b, depth)
        elif field == 5:
            _scan_tensor(buf, a, b)
        elif field == 15:
            _scan_sparse(buf, a, b)


def scan_model(data: bytes) -> None:
    """Refuse (``ModelRefusedError('unsafe_model')``) what the agent never loads."""
    try:
        for field, wire, a, b in _fields(data, 0, len(data)):
            if field == 7 and wire == 2:
                _scan_graph(data, a, b, 0)
            elif field == 14 and wire == 2:
                for f2, w2, a2, b2 in _fields(data, a, b):
                    # Guards against ORT_LOAD_CONFIG_FROM_MODEL=1 applying session options
                    # (threads, allocators, optimizations) chosen by the model's author.
                    if f2 == 1 and w2 == 2 and _text(data, a2, b2) == "ort_config":
                        raise _refuse("models carrying an 'ort_config' are refused")
            elif field == 25:
                # Guards against model-local functions hiding or shadowing operators.
                raise _refuse("model-local functions are refused")
            elif field == 20:
                raise _refuse("training information is refused")
    except IndexError as e:
        raise _refuse("malformed protobuf (truncated)") from e


# -- loading --------------------------------------------------------------------------------
def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def _spec_from_arg(arg: Any) -> TensorSpec:
    datatype = ORT_TO_OIP.get(arg.type)
    if datatype is None:
        raise ModelRefusedError(
            "incompatible",
            f"{arg.name!r} is a {arg.type}, not a tensor (convert with zipmap=False)",
        )
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or []))
    return TensorSpec(arg.name, datatype, shape)


def _merge_specs(
    declared: Sequence[TensorSpec], actual: Sequence[TensorSpec], what: str
) -> tuple[TensorSpec, ...]:
    """The package's specs, checked against the session's; the session's when none."""
    if not declared:
        return tuple(actual)
    by_name = {s.name: s for s in actual}
    if {s.name for s in declared} != set(by_name):
        raise ModelRefusedError(
            "incompatible",
            f"package {what} {sorted(s.name for s in declared)} do not match the model's "
            f"{sorted(by_name)}",
        )
    for spec in declared:
        if spec.datatype != by_name[spec.name].datatype:
            raise ModelRefusedError(
                "incompatible",
                f"package says {what[:-1]} {spec.name!r} is {spec.datatype}, "
                f"the model says {by_name[spec.name].datatype}",
            )
    return tuple(declared)


def load_model(path: Path, package: ModelPackage, limits: Limits | None = None) -> LoadedModel:
    """Verify and load ``path`` as ``package`` describes it; raises ``ModelRefusedError``."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ModelRefusedError("load_failed", f"cannot read {path}: {e}") from e
    # Guards against a model file swapped or corrupted on disk after TUF verified it.
    digest = hashlib.sha256(data).hexdigest()
    if digest != package.model_sha256.lower():
        raise ModelRefusedError(
            "hash_mismatch", f"{path.name} has sha256 {digest}, package says {package.model_sha256}"
        )
    if package.ort_min and _version_tuple(ort.__version__) < _version_tuple(package.ort_min):
        raise ModelRefusedError(
            "incompatible", f"needs onnxruntime >= {package.ort_min}, have {ort.__version__}"
        )
    scan_model(data)
    _ensure_arena()
    try:
        # From the verified bytes, never from the path (see the module docstring).
        session = ort.InferenceSession(
            data, sess_options=session_options(), providers=["CPUExecutionProvider"],
            read_config_from_model=0,  # whatever ORT_LOAD_CONFIG_FROM_MODEL says
        )
    except Exception as e:  # onnxruntime raises its own exception types
        raise ModelRefusedError("load_failed", f"onnxruntime refused the model: {e}") from e
    inputs = _merge_specs(package.inputs, [_spec_from_arg(a) for a in session.get_inputs()],
                          "inputs")
    outputs = _merge_specs(package.outputs, [_spec_from_arg(a) for a in session.get_outputs()],
                           "outputs")
    return LoadedModel(package.name, package.version, session, inputs, outputs, digest,
                       limits or Limits())


# -- the loaded model -----------------------------------------------------------------------
_FLOAT_KINDS = "fiub"  # may become a float
_INT_KINDS = "iub"  # may become an int (range checked)


def _coerce(name: str, value: Any, dtype: np.dtype[Any]) -> np.ndarray:
    """Convert ``value`` to ``dtype`` where that cannot change its meaning."""
    arr = value if isinstance(value, np.ndarray) else np.asarray(value)
    src = arr.dtype
    if src == dtype:
        return arr
    kind = dtype.kind
    if kind == "f" and src.kind in _FLOAT_KINDS:
        return arr.astype(dtype)
    if kind in "iu" and src.kind in _INT_KINDS:
        if arr.size and src.kind != "b":
            info = np.iinfo(dtype)
            if arr.min() < info.min or arr.max() > info.max:
                raise BadRequestError(f"input {name!r}: values out of range for {dtype}")
        return arr.astype(dtype)
    if kind == "O" and src.kind in "UO":
        if src.kind == "O" and not all(isinstance(v, str) for v in arr.flat):
            raise BadRequestError(f"input {name!r}: expected strings")
        return arr.astype(object)
    if kind == "b" and src.kind == "b":
        return arr
    raise BadRequestError(f"input {name!r}: expected {dtype}, got {src}")


class LoadedModel:
    """One model version in onnxruntime, with validated, thread-safe ``infer``."""

    def __init__(
        self,
        name: str,
        version: int,
        session: ort.InferenceSession,
        inputs: tuple[TensorSpec, ...],
        outputs: tuple[TensorSpec, ...],
        sha256: str,
        limits: Limits,
    ) -> None:
        self.name = name
        self.version = version
        self.session = session
        self.inputs = inputs
        self.outputs = outputs
        self.sha256 = sha256
        self.limits = limits
        self.output_names = [s.name for s in outputs]
        self.input_names = frozenset(s.name for s in inputs)
        self._checks = tuple(
            (s.name, OIP_TO_NUMPY[s.datatype], len(s.shape),
             tuple((i, d) for i, d in enumerate(s.shape) if d >= 0))
            for s in inputs
        )
        # The public InferenceSession.run re-validates names in Python; ours already did.
        inner = getattr(session, "_sess", None)
        self._run = inner.run if inner is not None and hasattr(inner, "run") else session.run

    def __repr__(self) -> str:
        return f"<LoadedModel {self.name}:{self.version}>"

    def check_inputs(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Validated, dtype-coerced feed; ``BadRequestError`` says what is wrong."""
        if len(inputs) != len(self._checks) or not self.input_names.issuperset(inputs):
            unknown = sorted(set(inputs) - self.input_names)
            missing = sorted(self.input_names - set(inputs))
            raise BadRequestError(
                f"model {self.name} takes inputs {sorted(self.input_names)}"
                + (f"; unknown {unknown}" if unknown else "")
                + (f"; missing {missing}" if missing else "")
            )
        limits = self.limits
        feed: dict[str, np.ndarray] = {}
        for name, dtype, ndim, fixed in self._checks:
            arr = inputs[name]
            if type(arr) is not np.ndarray or arr.dtype != dtype:
                arr = _coerce(name, arr, dtype)
            shape = arr.shape
            if len(shape) != ndim:
                raise BadRequestError(
                    f"input {name!r}: expected {ndim} dimensions, got shape {list(shape)}"
                )
            for i, d in fixed:
                if shape[i] != d:
                    raise BadRequestError(
                        f"input {name!r}: dimension {i} must be {d}, got shape {list(shape)}"
                    )
            # Guards against requests that would make onnxruntime allocate without bound.
            if ndim and shape[0] > limits.max_batch_rows:
                raise BadRequestError(
                    f"input {name!r}: {shape[0]} rows, at most {limits.max_batch_rows}"
                )
            if arr.nbytes > limits.max_input_bytes:
                raise BadRequestError(
                    f"input {name!r}: {arr.nbytes} bytes, at most {limits.max_input_bytes}"
                )
            feed[name] = arr
        return feed

    def infer(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Run the model; ``BadRequestError`` for bad inputs, ``InferenceError`` if it fails."""
        feed = self.check_inputs(inputs)
        try:
            values = self._run(self.output_names, feed, None)
        except Exception as e:  # onnxruntime's own exception types; never crash the caller
            raise InferenceError(f"model {self.name}:{self.version} failed: {e}") from e
        return dict(zip(self.output_names, values, strict=True))


# -- the registry ---------------------------------------------------------------------------
class ModelRegistry:
    """Thread-safe name -> ``LoadedModel``; readers never lock.

    The mapping is copied on write and replaced as a whole, so ``get`` is one attribute read
    and one dict lookup; a request that already holds a model keeps using it while ``swap``
    installs the next version, and later requests see the new one.
    """

    def __init__(self) -> None:
        self._models: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()

    def swap(self, model: LoadedModel) -> LoadedModel | None:
        """Serve ``model`` under its name from now on; returns the model it replaced."""
        with self._lock:
            models = dict(self._models)
            old = models.get(model.name)
            models[model.name] = model
            self._models = models
        return old

    def remove(self, name: str) -> LoadedModel | None:
        with self._lock:
            models = dict(self._models)
            old = models.pop(name, None)
            self._models = models
        return old

    def get(self, name: str) -> LoadedModel:
        model = self._models.get(name)
        if model is None:
            raise UnknownModelError(f"no model named {name!r} is loaded")
        return model

    def find(self, name: str) -> LoadedModel | None:
        return self._models.get(name)

    def models(self) -> dict[str, LoadedModel]:
        """A snapshot of what is served now."""
        return dict(self._models)

    def ready(self) -> bool:
        return bool(self._models)
