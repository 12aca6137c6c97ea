"""The FastAPI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from fleet_server.api import (
    admin,
    alerts,
    deployments,
    devices,
    drift,
    enrollment,
    metrics,
    models,
    tuf_files,
)
from fleet_server.exceptions import FleetServerError
from fleet_server.limits import BodyLimit
from fleet_server.services import FleetServices
from fleet_server.settings import Settings


def create_app(settings: Settings, services: FleetServices | None = None) -> FastAPI:
    """Build the app; ``services`` are made and started in the lifespan unless given."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own = services is None
        svc = services or FleetServices(settings)
        if own:
            svc.start()
        app.state.services = svc
        try:
            yield
        finally:
            if own:
                svc.stop()

    app = FastAPI(
        title="edgefleet fleet server",
        version="0.1.0",
        description="Publish models, enroll devices, deploy signed models over MQTT, "
        "watch health and drift. Authenticate with `Authorization: Bearer TOKEN`.",
        lifespan=lifespan,
    )

    @app.exception_handler(FleetServerError)
    async def _fleet_error(request: Request, exc: FleetServerError) -> JSONResponse:
        body: dict[str, object] = {"detail": str(exc)}
        details = getattr(exc, "details", None)
        if details:
            body.update(details)
        return JSONResponse(body, status_code=exc.status_code)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    app.add_middleware(
        BodyLimit,
        json_limit=1024 * 1024,
        upload_limit=settings.max_upload_bytes + settings.max_sample_bytes + 1024 * 1024,
    )
    for module in (
        models,
        enrollment,
        devices,
        deployments,
        drift,
        alerts,
        admin,
        metrics,
        tuf_files,
    ):
        app.include_router(module.router)
    return app
