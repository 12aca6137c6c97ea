"""Devices, their telemetry and revocation."""

from __future__ import annotations

from datetime import timedelta, timezone
from typing import Any

from fastapi import APIRouter, Query, Request
from sqlalchemy import select

from fleet_server.api.deps import Reader, Revoker, ServicesDep, SessionDep, remote
from fleet_server.auth import audit
from fleet_server.exceptions import NotFoundError
from fleet_server.schemas import DeviceOut, TelemetryRecordOut
from fleet_server.tables import Alert, Device, Telemetry, utcnow

REFUSAL_KINDS = ("device_refusal", "deployment_failed")

router = APIRouter(prefix="/api/v1/devices", tags=["devices"])


def _expires_soon(d: Device, days: int) -> bool:
    if d.cert_not_after is None or d.revoked_at is not None:
        return False
    not_after = d.cert_not_after
    if not_after.tzinfo is None:
        not_after = not_after.replace(tzinfo=timezone.utc)
    return not_after - utcnow() <= timedelta(days=days)


def _out(d: Device, full: bool = False, renew_days: int = 30) -> DeviceOut:
    return DeviceOut(
        id=d.id,
        group=d.group,
        state="revoked" if d.revoked_at else d.state,
        models=d.models,
        last_seen=d.last_seen,
        created_at=d.created_at,
        cert_not_after=d.cert_not_after,
        # Expired certificates take fleets down: flag them while the device can still renew.
        cert_expires_soon=_expires_soon(d, renew_days),
        revoked=d.revoked_at is not None,
        last_heartbeat=d.last_heartbeat if full else None,
    )


def _last_refusal(session: SessionDep, device_id: str) -> dict[str, Any] | None:
    """The device's latest refusal: reason code, message, deployment when known."""
    alert = session.scalar(
        select(Alert)
        .where(Alert.device_id == device_id, Alert.kind.in_(REFUSAL_KINDS))
        .order_by(Alert.created_at.desc(), Alert.id.desc())
        .limit(1)
    )
    if alert is None:
        return None
    return {
        "reason": str(alert.detail.get("reason", "")),
        "message": str(alert.detail.get("message", alert.message))[:500],
        "deployment": alert.detail.get("deployment"),
        "at": alert.created_at.isoformat(),
        "resolved": alert.resolved_at is not None,
    }


def _get(session: SessionDep, device_id: str) -> Device:
    device = session.get(Device, device_id)
    if device is None:
        raise NotFoundError(f"no device {device_id!r}")
    return device


@router.get("", response_model=list[DeviceOut])
def list_devices(
    session: SessionDep, actor: Reader, group: str | None = Query(None, max_length=63)
) -> list[DeviceOut]:
    stmt = select(Device).order_by(Device.id)
    if group is not None:
        stmt = stmt.where(Device.group == group)
    return [_out(d) for d in session.scalars(stmt)]


@router.get("/{device_id}", response_model=DeviceOut)
def show_device(device_id: str, session: SessionDep, actor: Reader) -> DeviceOut:
    out = _out(_get(session, device_id), full=True)
    out.last_refusal = _last_refusal(session, device_id)
    return out


@router.get("/{device_id}/telemetry", response_model=list[TelemetryRecordOut])
def device_telemetry(
    device_id: str,
    session: SessionDep,
    actor: Reader,
    kind: str | None = Query(None, max_length=20),
    limit: int = Query(100, ge=1, le=1000),
) -> list[Telemetry]:
    _get(session, device_id)
    stmt = select(Telemetry).where(Telemetry.device_id == device_id)
    if kind:
        stmt = stmt.where(Telemetry.kind == kind)
    return list(session.scalars(stmt.order_by(Telemetry.seq.desc()).limit(limit)))


@router.post("/{device_id}/revoke", response_model=DeviceOut)
def revoke_device(
    device_id: str, request: Request, services: ServicesDep, session: SessionDep, actor: Revoker
) -> DeviceOut:
    device = _get(session, device_id)
    if device.revoked_at is None:
        device.revoked_at = utcnow()
        if device.cert_serial:
            services.ca.revoke(int(device.cert_serial))
        session.flush()
        services.apply_revocations(session)
        audit(session, actor.name, "device.revoke", device_id, remote(request))
        session.commit()
    return _out(device, full=True)
