"""Model registry endpoints."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, Request, UploadFile
from sqlalchemy import func, select

from fleet_server.api.deps import Publisher, Reader, ServicesDep, SessionDep, remote
from fleet_server.auth import audit
from fleet_server.registry import get_version, publish_model
from fleet_server.schemas import ModelSummaryOut, ModelVersionOut
from fleet_server.tables import ModelVersion

router = APIRouter(prefix="/api/v1/models", tags=["models"])


async def _read_limited(upload: UploadFile, limit: int, what: str) -> bytes:
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(413, f"{what} is larger than the limit of {limit} bytes")
    return data


@router.post("/{name}/versions", status_code=201, response_model=ModelVersionOut)
async def publish(
    name: str,
    request: Request,
    services: ServicesDep,
    session: SessionDep,
    actor: Publisher,
    file: Annotated[
        UploadFile, File(description="ONNX file or scikit-learn model in skops format")
    ],
    sample: Annotated[UploadFile | None, File(description="CSV with a header row")] = None,
    tolerance: Annotated[float, Form(ge=0, le=1)] = 1e-4,
    force: Annotated[bool, Form()] = False,
) -> ModelVersion:
    """Convert, check, parity-check, sign and register a new immutable version."""
    if not services.publish_limiter.allow(actor.name):
        raise HTTPException(429, "too many publish calls; try again in a minute")
    data = await _read_limited(file, services.settings.max_upload_bytes, "model file")
    sample_bytes = (
        await _read_limited(sample, services.settings.max_sample_bytes, "sample")
        if sample is not None
        else None
    )
    from starlette.concurrency import run_in_threadpool

    row = await run_in_threadpool(
        publish_model,
        services,
        session,
        actor=actor.name,
        name=name,
        data=data,
        filename=file.filename or "model",
        sample=sample_bytes,
        tolerance=tolerance,
        force=force,
    )
    audit(
        session,
        actor.name,
        "model.publish",
        f"{name}:{row.version}",
        remote(request),
        sha256=row.sha256,
    )
    session.commit()
    return row


@router.get("", response_model=list[ModelSummaryOut])
def list_models(session: SessionDep, actor: Reader) -> list[dict[str, object]]:
    rows = session.execute(
        select(
            ModelVersion.name,
            func.max(ModelVersion.version),
            func.count(),
            func.max(ModelVersion.created_at),
        )
        .group_by(ModelVersion.name)
        .order_by(ModelVersion.name)
    ).all()
    return [{"name": n, "latest_version": v, "versions": c, "updated_at": t} for n, v, c, t in rows]


@router.get("/{name}/versions", response_model=list[ModelVersionOut])
def list_versions(name: str, session: SessionDep, actor: Reader) -> list[ModelVersion]:
    return list(
        session.scalars(
            select(ModelVersion).where(ModelVersion.name == name).order_by(ModelVersion.version)
        )
    )


@router.get("/{name}/versions/{version}", response_model=ModelVersionOut)
def show_version(name: str, version: int, session: SessionDep, actor: Reader) -> ModelVersion:
    return get_version(session, name, version)
