"""Prometheus ``/metrics``: the server's own health and fleet gauges."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, Response
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from sqlalchemy import func, select

from fleet_server.api.deps import ServicesDep, SessionDep
from fleet_server.tables import Alert, DeploymentDevice, Device, ModelVersion, utcnow

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response)
def metrics(session: SessionDep, services: ServicesDep) -> Response:
    """Fleet gauges in the Prometheus text format (scrape without a token on a private port)."""
    reg = CollectorRegistry()
    stale_after = utcnow() - timedelta(seconds=services.settings.staleness_s)
    devices = Gauge("edgefleet_devices", "enrolled devices by liveness", ["state"], registry=reg)
    total = session.scalar(
        select(func.count()).select_from(Device).where(Device.revoked_at.is_(None))
    )
    online = session.scalar(
        select(func.count())
        .select_from(Device)
        .where(Device.revoked_at.is_(None), Device.last_seen >= stale_after)
    )
    devices.labels("online").set(online or 0)
    devices.labels("stale").set((total or 0) - (online or 0))
    Gauge("edgefleet_model_versions", "registered model versions", registry=reg).set(
        session.scalar(select(func.count()).select_from(ModelVersion)) or 0
    )
    dep = Gauge(
        "edgefleet_deployment_devices", "device deployments by status", ["status"], registry=reg
    )
    for status, n in session.execute(
        select(DeploymentDevice.status, func.count()).group_by(DeploymentDevice.status)
    ):
        dep.labels(status).set(n)
    Gauge("edgefleet_open_alerts", "open alerts", registry=reg).set(
        session.scalar(select(func.count()).select_from(Alert).where(Alert.resolved_at.is_(None)))
        or 0
    )
    Gauge("edgefleet_ingest_queue", "uplinks waiting for ingestion", registry=reg).set(
        services.uplinks.depth()
    )
    Gauge("edgefleet_mqtt_connected", "server connected to the broker", registry=reg).set(
        1 if services.mqtt is not None and services.mqtt.connected.is_set() else 0
    )
    return Response(generate_latest(reg), media_type=CONTENT_TYPE_LATEST)
