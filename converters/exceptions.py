"""Exceptions raised by the converters for bad input from outside.

A caller's own bug is an ``assert`` or ``RuntimeError``; a model file, a sample CSV or a
model that does not behave raises one of these::

    ConverterError             base: the upload cannot become a signed ONNX model
    ├── UnsafeModelError       refused for safety: pickle/joblib, external data, a custom
    │                          operator domain, an oversized file, an untrusted skops type
    ├── UnsupportedModelError  no converter for this estimator (``estimator`` names it) or
    │                          an unrecognised file format
    ├── ModelCheckError        the ONNX file failed a check (``check`` and ``node`` name it)
    ├── ParityError            ONNX outputs differ from the original model's beyond the
    │                          tolerance (``report`` holds the full parity report)
    └── SampleError            the sample CSV is unusable (encoding, header, rows, columns)
"""

from __future__ import annotations

from typing import Any


class ConverterError(Exception):
    """Base class of every error the converters report for outside input."""


class UnsafeModelError(ConverterError):
    """The upload is refused because loading or shipping it would not be safe.

    ``check`` and ``node`` are set when an ONNX check refused it (for example
    ``"external_data"`` and the initializer's name).
    """

    def __init__(self, message: str, *, check: str | None = None, node: str | None = None) -> None:
        super().__init__(message)
        self.check = check
        self.node = node


class UnsupportedModelError(ConverterError):
    """No converter handles this estimator or file format."""

    def __init__(self, message: str, *, estimator: str | None = None) -> None:
        super().__init__(message)
        self.estimator = estimator


class ModelCheckError(ConverterError):
    """An ONNX model failed one of the checks in ``converters.checks``."""

    def __init__(self, check: str, message: str, *, node: str | None = None) -> None:
        where = f" (node {node!r})" if node else ""
        super().__init__(f"check {check!r} failed{where}: {message}")
        self.check = check
        self.node = node


class ParityError(ConverterError):
    """The converted model's outputs differ from the original's beyond the tolerance."""

    def __init__(self, message: str, report: dict[str, Any]) -> None:
        super().__init__(message)
        self.report = report


class SampleError(ConverterError):
    """The sample CSV cannot be used for parity, self-test and the reference profile."""
