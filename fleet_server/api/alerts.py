"""Alerts: drift, staleness, failed deployments, identity problems."""

from __future__ import annotations

from fastapi import APIRouter, Query
from sqlalchemy import select

from fleet_server.api.deps import Reader, SessionDep
from fleet_server.schemas import AlertOut
from fleet_server.tables import Alert

router = APIRouter(prefix="/api/v1/alerts", tags=["alerts"])


@router.get("", response_model=list[AlertOut])
def list_alerts(
    session: SessionDep,
    actor: Reader,
    open_only: bool = False,
    limit: int = Query(200, ge=1, le=1000),
) -> list[Alert]:
    stmt = select(Alert).order_by(Alert.id.desc()).limit(limit)
    if open_only:
        stmt = stmt.where(Alert.resolved_at.is_(None))
    return list(session.scalars(stmt))
