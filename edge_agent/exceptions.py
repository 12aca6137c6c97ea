"""Exceptions raised by the edge agent for bad input from outside.

A caller's own bug is an ``assert`` or ``RuntimeError``; everything that comes from the
network, the disk, the fleet server or a model file raises one of these::

    EdgeAgentError
    ├── ConfigError            bad or missing configuration
    ├── ProtocolError          a message that does not follow edge_agent.protocol
    ├── EnrollmentError        the server refused or failed enrollment
    ├── TransportError         the broker is unreachable or a transfer broke off
    ├── UpdateError            a deployment could not be completed (carries a reason code)
    │   ├── TrustError         TUF verification failed (tampered, rolled back, expired, ...)
    │   ├── IncompatibleModelError  the model needs a newer runtime or other hardware
    │   └── HealthGateError    the new model failed its self-test or latency budget
    ├── ModelLoadError         onnxruntime refused the model file
    └── InferenceError         a request the model cannot answer
        ├── UnknownModelError  no model of that name is loaded
        └── BadRequestError    wrong shape, dtype, size or JSON
"""

from __future__ import annotations


class EdgeAgentError(Exception):
    """Base class of every error the agent reports for outside input."""


class ConfigError(EdgeAgentError):
    """Configuration is missing or invalid."""


class ProtocolError(EdgeAgentError):
    """A message does not follow the wire contract in ``edge_agent.protocol``."""


class EnrollmentError(EdgeAgentError):
    """Enrollment with the fleet server failed."""


class TransportError(EdgeAgentError):
    """The broker or server could not be reached, or a transfer broke off."""


class UpdateError(EdgeAgentError):
    """A deployment could not be completed.

    ``reason`` is a short, stable code (see ``edge_agent.protocol.REASON_CODES``) that the
    agent reports upstream and the fleet server shows per device.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class TrustError(UpdateError):
    """TUF verification failed: the artifact or metadata cannot be trusted."""


class IncompatibleModelError(UpdateError):
    """The model needs a newer runtime, another opset or another hardware class."""


class HealthGateError(UpdateError):
    """The new model failed its self-test, parity tolerance or latency budget."""


class ModelLoadError(EdgeAgentError):
    """onnxruntime (or a pre-load check) refused a model file."""


class InferenceError(EdgeAgentError):
    """An inference request failed."""


class UnknownModelError(InferenceError):
    """No model of that name is loaded."""


class BadRequestError(InferenceError):
    """The request has the wrong shape, dtype, size or is not valid JSON."""
