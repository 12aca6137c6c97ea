"""Raising and resolving alerts; one open alert per (kind, device)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleet_server.tables import Alert, Device, utcnow


def raise_alert(
    session: Session,
    kind: str,
    message: str,
    *,
    device_id: str | None = None,
    severity: str = "warning",
    detail: dict[str, Any] | None = None,
) -> Alert:
    """Open an alert, or refresh the open one of the same kind for the same device."""
    row = session.scalar(
        select(Alert).where(
            Alert.kind == kind, Alert.device_id == device_id, Alert.resolved_at.is_(None)
        )
    )
    if row is None:
        row = Alert(
            kind=kind, device_id=device_id, severity=severity, message=message, detail=detail or {}
        )
        session.add(row)
    else:
        row.message, row.detail, row.severity = message, detail or {}, severity
    return row


def resolve_alerts(session: Session, kind: str, device_id: str | None) -> None:
    for row in session.scalars(
        select(Alert).where(
            Alert.kind == kind, Alert.device_id == device_id, Alert.resolved_at.is_(None)
        )
    ):
        row.resolved_at = utcnow()


def check_staleness(session: Session, stale_after: timedelta, now: datetime | None = None) -> int:
    """Alert for devices that stopped reporting; resolve for those that came back."""
    now = now or utcnow()
    cutoff = now - stale_after
    raised = 0
    for device in session.scalars(select(Device).where(Device.revoked_at.is_(None))):
        seen = device.last_seen
        if seen is not None and seen.tzinfo is None:
            seen = seen.replace(tzinfo=cutoff.tzinfo)
        if seen is not None and seen < cutoff:
            raise_alert(
                session,
                "stale",
                f"{device.id} has not reported since {seen:%Y-%m-%d %H:%M:%S}Z",
                device_id=device.id,
                detail={"last_seen": seen.isoformat()},
            )
            raised += 1
        elif seen is not None:
            resolve_alerts(session, "stale", device.id)
    return raised
