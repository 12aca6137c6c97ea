"""Exceptions of the fleet server for bad input from outside.

The API layer maps them to HTTP status codes (in ``fleet_server.app``)::

    FleetServerError             500 unless a subclass says otherwise
    ├── NotFoundError            404 no such model, version, device or deployment
    ├── ConflictError            409 the object exists already or is in the wrong state
    ├── InvalidRequestError      422 a request that is well-formed JSON but makes no sense
    ├── ModelRejectedError       422 the uploaded model failed a check (carries the details)
    ├── EnrollmentRefusedError   403 unknown, used or expired enrollment token
    ├── BrokerError              503 the MQTT broker is unreachable or failed to start
    └── ConfigurationError           bad settings (startup only)
"""

from __future__ import annotations

from typing import Any


class FleetServerError(Exception):
    status_code = 500


class NotFoundError(FleetServerError):
    status_code = 404


class ConflictError(FleetServerError):
    status_code = 409


class InvalidRequestError(FleetServerError):
    status_code = 422


class ModelRejectedError(FleetServerError):
    status_code = 422

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.details = details or {}


class EnrollmentRefusedError(FleetServerError):
    status_code = 403


class BrokerError(FleetServerError):
    status_code = 503


class ConfigurationError(FleetServerError):
    pass
