"""Request and response bodies of the REST API. Request bodies refuse unknown fields."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Strict(BaseModel):
    # Mass assignment: unknown or server-owned fields in a body are refused (422).
    model_config = ConfigDict(extra="forbid")


class TensorOut(BaseModel):
    name: str
    datatype: str
    shape: list[int]


def _as_utc(value: datetime | None) -> datetime | None:
    """SQLite gives back naive datetimes; they were stored in UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value


class ModelVersionOut(BaseModel):
    name: str
    version: int
    sha256: str
    size: int
    opset: int
    opsets: dict[str, int] = Field(description='every operator domain\'s opset; "" = ai.onnx')
    ort_min: str
    inputs: list[TensorOut]
    outputs: list[TensorOut]
    parity: dict[str, Any]
    framework: dict[str, Any]
    lineage: dict[str, Any]
    latency: dict[str, Any] = Field(
        description="measured on the server at publish: single-row p50 and batch throughput"
    )
    tags: list[str]
    stage: str = Field(description="none, staging, production or archived")
    variant: str = Field(description="base, or the optimized variant's kind")
    base_version: int | None = Field(None, description="the version a variant was built from")
    variants: list[int] = Field(default_factory=list, description="versions built from this")
    created_at: datetime
    published_by: str
    deprecated: bool
    deprecated_reason: str = ""
    deprecated_at: datetime | None = None

    _utc = field_validator("created_at", "deprecated_at")(lambda v: _as_utc(v))


class ModelSummaryOut(BaseModel):
    name: str
    latest_version: int
    versions: int
    updated_at: datetime
    production_version: int | None = None
    staging_versions: list[int] = Field(default_factory=list)
    deprecated_versions: list[int] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list, description="tags of any version")
    matching_versions: list[int] = Field(
        default_factory=list, description="versions that match the listing's filters"
    )

    _utc = field_validator("updated_at")(lambda v: _as_utc(v))


class EnrollmentTokenIn(Strict):
    group: str = Field("", max_length=63, pattern=r"^[a-z0-9_.-]*$")
    expires_in_s: int = Field(24 * 3600, ge=60, le=30 * 24 * 3600)

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"group": "lab", "expires_in_s": 3600}]}
    )


class EnrollmentTokenOut(BaseModel):
    token: str
    group: str
    expires_at: datetime


class EnrollIn(Strict):
    token: str = Field(max_length=200)
    csr: str = Field(max_length=8192, description="PEM certificate signing request")
    name: str | None = Field(None, max_length=63)

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "token": "efe_...",
                    "csr": "-----BEGIN CERTIFICATE REQUEST-----\n...",
                    "name": "press-7",
                }
            ]
        },
    )


class EnrollOut(BaseModel):
    device_id: str
    certificate: str
    ca_certificate: str
    mqtt_url: str
    tuf_root: str
    api_url: str


class RenewIn(Strict):
    csr: str = Field(max_length=8192)
    certificate: str = Field(max_length=16384, description="the current certificate (PEM)")


class RenewOut(BaseModel):
    certificate: str
    ca_certificate: str


class DeviceOut(BaseModel):
    id: str
    group: str
    state: str
    models: dict[str, Any]
    last_seen: datetime | None
    created_at: datetime
    cert_not_after: datetime | None
    cert_expires_soon: bool = False
    revoked: bool
    last_heartbeat: dict[str, Any] | None = None
    last_refusal: dict[str, Any] | None = None  # the latest update the device refused


class Target(Strict):
    devices: list[str] | None = Field(None, min_length=1, max_length=10_000)
    group: str | None = Field(None, max_length=63)

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"devices": ["press-7"]}, {"group": "lab"}]}
    )


class DeploymentIn(Strict):
    model: str = Field(max_length=63)
    version: int = Field(ge=1, le=2**31 - 1)
    target: Target

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"model": "iris", "version": 1, "target": {"devices": ["dev-1"]}}]
        },
    )


class DeviceStatusOut(BaseModel):
    device: str
    status: str
    reason: str
    message: str
    updated_at: datetime


class DeploymentOut(BaseModel):
    id: str
    model: str
    version: int
    target: dict[str, Any]
    created_by: str
    created_at: datetime
    devices: list[DeviceStatusOut]
    counts: dict[str, int]


class TelemetryRecordOut(BaseModel):
    seq: int
    kind: str
    ts: datetime
    body: dict[str, Any]


class AlertOut(BaseModel):
    id: int
    kind: str
    severity: str
    device_id: str | None
    message: str
    detail: dict[str, Any]
    created_at: datetime
    resolved_at: datetime | None
