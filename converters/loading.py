"""Recognise an uploaded model file by its content and load the formats that are safe.

The server accepts ONNX and skops. Pickle and joblib are refused: unpickling runs code the
file chooses. An engineer converts such a file on their own machine with
``fleetctl models convert FILE`` (``convert_pickle_locally`` below), then publishes the ONNX.
"""

from __future__ import annotations

import importlib
import io
import pickletools
import zipfile
from pathlib import Path
from typing import Any, Literal

from converters.exceptions import UnsafeModelError, UnsupportedModelError

ModelFormat = Literal["onnx", "skops"]

PICKLE_HINT = (
    "pickle/joblib files are not loaded on the server (unpickling runs arbitrary code); "
    "convert it on your own machine with `fleetctl models convert FILE --out model.onnx` "
    "and publish the ONNX file, or save the model with skops.io.dump"
)

# skops: module prefixes whose *classes* we trust. These are the libraries the converters
# support; their classes restore state without doing I/O.
TRUSTED_MODULE_PREFIXES = ("sklearn.", "numpy.", "lightgbm.", "scipy.sparse.")
# Plain containers outside those libraries that estimators hold (LightGBM keeps an
# OrderedDict of its parameters).
TRUSTED_EXTRA_TYPES = frozenset({"collections.OrderedDict", "builtins.slice"})
# Classes under a trusted prefix that open files or URLs when constructed: never trusted.
DENIED_TYPES = frozenset({"numpy.memmap", "numpy.core.memmap.memmap", "numpy._core.memmap.memmap"})
DENIED_MODULE_PARTS = ("datasource", "npyio", "_testing", "testing", "datasets", "f2py", "ctypes")

_COMPRESSED_MAGIC = {
    b"\x1f\x8b": "gzip",
    b"BZh": "bzip2",
    b"\xfd7zXZ\x00": "xz",
    b"\x5d\x00\x00": "lzma",
    b"\x04\x22\x4d\x18": "lz4",
    b"ZF": "joblib zlib",
    b"\x78\x01": "zlib",
    b"\x78\x5e": "zlib",
    b"\x78\x9c": "zlib",
    b"\x78\xda": "zlib",
}
_PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib", ".sav", ".pck")


def detect_format(data: bytes, filename: str = "") -> ModelFormat:
    """Return the format of ``data`` judged by its content; refuse anything unsafe.

    Raises UnsafeModelError for pickle/joblib (and compressed blobs that may hide one) and
    UnsupportedModelError for anything that is neither ONNX nor skops.
    """
    if not data:
        raise UnsupportedModelError("the model file is empty")
    if data.startswith(b"PK\x03\x04"):
        if _is_skops_zip(data):
            return "skops"
        raise UnsupportedModelError(
            f"{filename or 'file'} is a zip archive but not a skops file (a PyTorch "
            "checkpoint?); export the model to ONNX or save it with skops.io.dump"
        )
    # Guards against unpickling: pickle runs code chosen by whoever wrote the file.
    if _looks_like_pickle(data):
        raise UnsafeModelError(f"{filename or 'file'}: {PICKLE_HINT}", check="format")
    for magic, kind in _COMPRESSED_MAGIC.items():
        if data.startswith(magic):
            raise UnsafeModelError(
                f"{filename or 'file'} is {kind}-compressed; compressed uploads are not "
                f"unpacked on the server. If it is a joblib dump: {PICKLE_HINT}",
                check="format",
            )
    if _looks_like_onnx(data):
        return "onnx"
    if filename.lower().endswith(_PICKLE_SUFFIXES):
        raise UnsafeModelError(f"{filename}: {PICKLE_HINT}", check="format")
    raise UnsupportedModelError(
        f"{filename or 'file'} is not a recognised model file: expected an ONNX model "
        "(.onnx) or a skops file (.skops); pickle/joblib must be converted locally with "
        "`fleetctl models convert FILE`"
    )


def _is_skops_zip(data: bytes) -> bool:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            return "schema.json" in zf.namelist()
    except zipfile.BadZipFile:
        return False


def _looks_like_pickle(data: bytes) -> bool:
    # Protocol 2+ starts with PROTO; joblib's uncompressed dumps are pickles too.
    if len(data) >= 2 and data[0] == 0x80 and 2 <= data[1] <= 5:
        return True
    # Protocols 0/1: parse the opcode stream (pickletools only reads, it never executes).
    try:
        for ops, (opcode, _arg, _pos) in enumerate(pickletools.genops(io.BytesIO(data))):
            if opcode.name == "STOP":
                return ops > 0
    except Exception:
        return False
    return False


def _looks_like_onnx(data: bytes) -> bool:
    import onnx
    from google.protobuf.message import DecodeError

    # ONNX writers emit field 1 (ir_version, varint) first.
    if data[:1] != b"\x08":
        return False
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError):
        return False
    return model.ir_version > 0 and model.HasField("graph")


def _is_trusted_type(name: str) -> bool:
    if name in TRUSTED_EXTRA_TYPES:
        return True
    if name in DENIED_TYPES or not name.startswith(TRUSTED_MODULE_PREFIXES):
        return False
    module_name, _, attr = name.rpartition(".")
    if any(part in module_name for part in DENIED_MODULE_PARTS):
        return False
    try:
        # Importing is safe here: the prefix limits it to libraries installed with us.
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError):
        return False
    # Classes only: a function named in a skops file could be *called* on load.
    return isinstance(obj, type)


def untrusted_types(data: bytes) -> tuple[list[str], list[str]]:
    """Split the types a skops file names (beyond skops' defaults) into trusted / refused."""
    import skops.io as sio

    try:
        names = sio.get_untrusted_types(data=data)
    except Exception as e:
        raise UnsupportedModelError(f"not a valid skops file: {e}") from e
    trusted = [n for n in names if _is_trusted_type(n)]
    refused = [n for n in names if n not in trusted]
    return trusted, refused


def load_skops(data: bytes) -> Any:
    """Load a skops file, trusting only the reviewed list of library classes."""
    import skops.io as sio

    trusted, refused = untrusted_types(data)
    # Guards against code execution through skops: only classes of the libraries we
    # convert are constructed; any other type (functions, os, subprocess, ...) is refused.
    if refused:
        raise UnsafeModelError(
            f"skops file names types that are not trusted: {', '.join(sorted(refused))}",
            check="skops_types",
        )
    try:
        estimator = sio.loads(data, trusted=trusted)
    except Exception as e:
        raise UnsupportedModelError(f"cannot load skops file: {e}") from e
    if not any(hasattr(estimator, a) for a in ("predict", "transform", "decision_function")):
        raise UnsupportedModelError(
            f"skops file holds a {type(estimator).__name__}, not an estimator",
            estimator=type(estimator).__name__,
        )
    return estimator


def convert_pickle_locally(path: str | Path) -> Any:
    """Load YOUR OWN pickle/joblib model on your own machine and return the estimator.

    Unpickling runs code from the file: call this only for files you made. It exists for
    ``fleetctl models convert`` on an engineer's laptop and is never called by the server.
    """
    import joblib

    p = Path(path)
    if not p.is_file():
        raise UnsupportedModelError(f"{p} is not a file")
    estimator = joblib.load(p)
    if not any(hasattr(estimator, a) for a in ("predict", "transform", "decision_function")):
        raise UnsupportedModelError(
            f"{p} holds a {type(estimator).__name__}, not an estimator",
            estimator=type(estimator).__name__,
        )
    return estimator
