"""Drift per device and across the fleet, and accuracy where labels exist."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query
from sqlalchemy import select

from fleet_server.api.deps import Reader, ServicesDep, SessionDep
from fleet_server.exceptions import NotFoundError
from fleet_server.monitoring import accuracy, default_since, drift_for, recent_summaries
from fleet_server.tables import Device

router = APIRouter(prefix="/api/v1", tags=["drift"])

METRICS = ("psi", "js", "wasserstein", "chi2", "p_value")


@router.get("/devices/{device_id}/drift")
def device_drift(
    device_id: str,
    session: SessionDep,
    services: ServicesDep,
    actor: Reader,
    hours: float = Query(24.0, gt=0, le=24 * 90),
) -> dict[str, Any]:
    """Per-feature drift of the device's active models against their reference profiles,
    over the summaries of the last ``hours``; evaluated only with enough rows."""
    device = session.get(Device, device_id)
    if device is None:
        raise NotFoundError(f"no device {device_id!r}")
    since = default_since(hours)
    models = [
        drift_for(
            session,
            services.monitor.profiles,
            device_id,
            name,
            int(version),
            since=since,
            min_rows=services.settings.drift_min_rows,
        )
        for name, version in sorted(device.models.items())
        if isinstance(version, int)
    ]
    return {"device": device_id, "since": since, "models": models}


@router.get("/drift/heatmap")
def heatmap(
    session: SessionDep,
    services: ServicesDep,
    actor: Reader,
    model: str = Query("", max_length=63),
    version: int = Query(0, ge=0, le=2**31 - 1),
    metric: str = Query("psi", pattern="^(" + "|".join(METRICS) + ")$"),
    hours: float = Query(24.0, gt=0, le=24 * 90),
) -> dict[str, Any]:
    """Devices x features of one drift metric for the devices running ``model:version``."""
    since = default_since(hours)
    devices = [
        d
        for d in session.scalars(
            select(Device).where(Device.revoked_at.is_(None)).order_by(Device.id)
        )
        if model and d.models.get(model) == version
    ]
    features: list[str] = []
    rows = []
    for d in devices:
        result = drift_for(
            session,
            services.monitor.profiles,
            d.id,
            model,
            version,
            since=since,
            min_rows=services.settings.drift_min_rows,
        )
        values = {f["feature"]: (f[metric], f["level"]) for f in result["features"]}
        for name in values:
            if name not in features:
                features.append(name)
        rows.append((d.id, values))
    return {
        "model": model,
        "version": version,
        "metric": metric,
        "features": features,
        "devices": [d for d, _ in rows],
        "values": [[v.get(f, (None, None))[0] for f in features] for _, v in rows],
        "levels": [[v.get(f, (None, "ok"))[1] for f in features] for _, v in rows],
    }


@router.get("/drift/accuracy")
def model_accuracy(
    session: SessionDep,
    actor: Reader,
    model: str = Query(max_length=63),
    version: int = Query(ge=1, le=2**31 - 1),
    hours: float = Query(24.0 * 7, gt=0, le=24 * 90),
) -> dict[str, Any]:
    """Accuracy of a model version from the confusion counts devices sent for labels."""
    since = default_since(hours)
    cells: dict[tuple[int, int], int] = {}
    for device_id in session.scalars(select(Device.id)):
        for body in recent_summaries(session, device_id, model, version, since, 5000):
            for t, p, c in body.get("labels") or []:
                cells[(t, p)] = cells.get((t, p), 0) + c
    return {
        "model": model,
        "version": version,
        **accuracy([[t, p, c] for (t, p), c in cells.items()]),
    }
