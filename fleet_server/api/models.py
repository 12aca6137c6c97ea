"""Model registry endpoints: publish, list and search, show, stage, tags, deprecate,
optimized variants. Every change is audited; changes need the publisher or admin role."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, HTTPException, Path, Query, Request, UploadFile
from pydantic import Field
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from fleet_server.api.deps import Publisher, Reader, ServicesDep, SessionDep, remote
from fleet_server.auth import audit
from fleet_server.registry import (
    MAX_TAGS,
    STAGES,
    change_tags,
    deprecate,
    get_version,
    list_versions,
    publish_model,
    publish_variant,
    set_stage,
    set_tags,
    summaries,
    variants_of,
)
from fleet_server.schemas import ModelSummaryOut, ModelVersionOut, Strict
from fleet_server.services import FleetServices
from fleet_server.tables import ModelVersion

router = APIRouter(prefix="/api/v1/models", tags=["models"])

VersionPath = Annotated[int, Path(ge=1, le=2**31 - 1)]
_TAG = r"^[a-z0-9][a-z0-9_.:-]{0,39}$"
_STAGE = "^(" + "|".join(STAGES) + ")$"


class StageIn(Strict):
    stage: str = Field(pattern=_STAGE, description=", ".join(STAGES))


class TagsIn(Strict):
    tags: list[Annotated[str, Field(pattern=_TAG)]] = Field(max_length=MAX_TAGS)


class TagChangeIn(Strict):
    add: list[Annotated[str, Field(pattern=_TAG)]] = Field([], max_length=MAX_TAGS)
    remove: list[Annotated[str, Field(pattern=_TAG)]] = Field([], max_length=MAX_TAGS)


class DeprecateIn(Strict):
    reason: str = Field("", max_length=500)


class VariantIn(Strict):
    kind: str = Field("optimized", pattern="^optimized$")
    tolerance: float = Field(1e-2, ge=0, le=1)
    quantize: bool = Field(True, description="try dynamic int8 quantization first")
    force: bool = Field(False, description="register even if parity fails")


def _out(session: Session, rows: list[ModelVersion]) -> list[ModelVersionOut]:
    derived: dict[str, dict[int, list[int]]] = {}
    out = []
    for row in rows:
        if row.name not in derived:
            derived[row.name] = variants_of(session, row.name)
        item = ModelVersionOut.model_validate(row, from_attributes=True)
        item.variants = derived[row.name].get(row.version, [])
        out.append(item)
    return out


def _rate_limit(services: FleetServices, actor: str) -> None:
    if not services.publish_limiter.allow(actor):
        raise HTTPException(429, "too many publish calls; try again in a minute")


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
    variant: Annotated[
        str,
        Form(
            pattern="^(|optimized)$",
            description="'optimized': also register the optimized variant as the next version",
        ),
    ] = "",
    variant_tolerance: Annotated[float, Form(ge=0, le=1)] = 1e-2,
) -> ModelVersionOut:
    """Convert, check, parity-check, measure, sign and register a new immutable version.
    Publishing the same file again makes a new version; nothing is ever overwritten."""
    _rate_limit(services, actor.name)
    data = await _read_limited(file, services.settings.max_upload_bytes, "model file")
    sample_bytes = (
        await _read_limited(sample, services.settings.max_sample_bytes, "sample")
        if sample is not None
        else None
    )
    rows = await run_in_threadpool(
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
        variant=variant,
        variant_tolerance=variant_tolerance,
    )
    for row in rows:
        audit(
            session,
            actor.name,
            "model.publish" if row.base_version is None else "model.publish_variant",
            f"{name}:{row.version}",
            remote(request),
            sha256=row.sha256,
            variant=row.variant,
            base_version=row.base_version,
            parity_passed=bool(row.parity.get("passed")),
            forced=bool(row.parity.get("forced")),
        )
    session.commit()
    return _out(session, rows[:1])[0]


@router.get("", response_model=list[ModelSummaryOut])
def list_models(
    session: SessionDep,
    actor: Reader,
    prefix: Annotated[str | None, Query(max_length=63, description="name prefix")] = None,
    tag: Annotated[str | None, Query(pattern=_TAG)] = None,
    stage: Annotated[str | None, Query(pattern=_STAGE)] = None,
    deprecated: Annotated[bool | None, Query()] = None,
) -> list[dict[str, Any]]:
    """One row per model name; filters keep names with a matching version."""
    return summaries(session, prefix=prefix, tag=tag, stage=stage, deprecated=deprecated)


@router.get("/{name}/versions", response_model=list[ModelVersionOut])
def list_model_versions(
    name: str,
    session: SessionDep,
    actor: Reader,
    tag: Annotated[str | None, Query(pattern=_TAG)] = None,
    stage: Annotated[str | None, Query(pattern=_STAGE)] = None,
    deprecated: Annotated[bool | None, Query()] = None,
) -> list[ModelVersionOut]:
    rows = list_versions(session, name, tag=tag, stage=stage, deprecated=deprecated)
    return _out(session, rows)


@router.get("/{name}/versions/{version}", response_model=ModelVersionOut)
def show_version(
    name: str, version: VersionPath, session: SessionDep, actor: Reader
) -> ModelVersionOut:
    return _out(session, [get_version(session, name, version)])[0]


@router.put("/{name}/versions/{version}/stage", response_model=ModelVersionOut)
def put_stage(
    name: str,
    version: VersionPath,
    body: StageIn,
    request: Request,
    services: ServicesDep,
    session: SessionDep,
    actor: Publisher,
) -> ModelVersionOut:
    """Set the stage; promoting to production archives the previous production version."""
    with services.publish_lock:
        row = get_version(session, name, version)
        before = row.stage
        archived = set_stage(session, row, body.stage)
        audit(
            session,
            actor.name,
            "model.stage",
            f"{name}:{version}",
            remote(request),
            before=before,
            after=body.stage,
            archived=archived,
        )
        session.commit()
    return _out(session, [row])[0]


def _tags_changed(
    session: Session, row: ModelVersion, before: list[str], actor: str, request: Request
) -> ModelVersionOut:
    audit(
        session,
        actor,
        "model.tags",
        f"{row.name}:{row.version}",
        remote(request),
        before=before,
        after=list(row.tags),
    )
    session.commit()
    return _out(session, [row])[0]


@router.put("/{name}/versions/{version}/tags", response_model=ModelVersionOut)
def put_tags(
    name: str,
    version: VersionPath,
    body: TagsIn,
    request: Request,
    session: SessionDep,
    actor: Publisher,
) -> ModelVersionOut:
    """Replace the version's tags."""
    row = get_version(session, name, version)
    before = list(row.tags)
    set_tags(row, body.tags)
    return _tags_changed(session, row, before, actor.name, request)


@router.post("/{name}/versions/{version}/tags", response_model=ModelVersionOut)
def post_tags(
    name: str,
    version: VersionPath,
    body: TagChangeIn,
    request: Request,
    session: SessionDep,
    actor: Publisher,
) -> ModelVersionOut:
    """Add and remove tags."""
    row = get_version(session, name, version)
    before = list(row.tags)
    change_tags(row, body.add, body.remove)
    return _tags_changed(session, row, before, actor.name, request)


@router.post("/{name}/versions/{version}/deprecate", response_model=ModelVersionOut)
def post_deprecate(
    name: str,
    version: VersionPath,
    request: Request,
    session: SessionDep,
    actor: Publisher,
    body: DeprecateIn | None = None,
) -> ModelVersionOut:
    """Deprecate (one way): no new deployments; a staged version is archived.
    Deprecating a deprecated version changes nothing."""
    row = get_version(session, name, version)
    stage_before = row.stage
    reason = body.reason if body else ""
    if deprecate(row, reason):
        audit(
            session,
            actor.name,
            "model.deprecate",
            f"{name}:{version}",
            remote(request),
            reason=reason,
            stage_before=stage_before,
            stage_after=row.stage,
        )
        session.commit()
    return _out(session, [row])[0]


@router.post("/{name}/versions/{version}/variants", status_code=201, response_model=ModelVersionOut)
async def post_variant(
    name: str,
    version: VersionPath,
    request: Request,
    services: ServicesDep,
    session: SessionDep,
    actor: Publisher,
    body: VariantIn | None = None,
) -> ModelVersionOut:
    """Build the optimized variant of a base version (quantized when smaller and within
    tolerance, else graph-optimized) and register it as a new version."""
    body = body or VariantIn.model_validate({})
    _rate_limit(services, actor.name)
    row = await run_in_threadpool(
        publish_variant,
        services,
        session,
        actor=actor.name,
        name=name,
        version=version,
        kind=body.kind,
        tolerance=body.tolerance,
        quantize=body.quantize,
        force=body.force,
    )
    audit(
        session,
        actor.name,
        "model.publish_variant",
        f"{name}:{row.version}",
        remote(request),
        sha256=row.sha256,
        variant=row.variant,
        base_version=version,
        parity_passed=bool(row.parity.get("passed")),
        forced=bool(row.parity.get("forced")),
    )
    session.commit()
    return _out(session, [row])[0]
