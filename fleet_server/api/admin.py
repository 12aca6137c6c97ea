"""API tokens (create, list, revoke, rotate) and the audit log. Admin only."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from fleet_server.api.deps import Admin, SessionDep, remote
from fleet_server.auth import ROLES, audit, create_token
from fleet_server.exceptions import NotFoundError
from fleet_server.schemas import Strict
from fleet_server.tables import ApiToken, AuditRecord, utcnow

router = APIRouter(prefix="/api/v1", tags=["admin"])


class TokenIn(Strict):
    name: str = Field(min_length=1, max_length=120)
    role: str = Field(pattern="^(" + "|".join(ROLES) + ")$")
    expires_in_s: int | None = Field(90 * 24 * 3600, ge=60, le=3 * 365 * 24 * 3600)

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"name": "ci", "role": "publisher", "expires_in_s": 86400}]
        },
    )


class TokenOut(BaseModel):
    id: int
    name: str
    role: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


class NewTokenOut(TokenOut):
    token: str = Field(description="shown once; only a hash is stored")


class AuditOut(BaseModel):
    id: int
    ts: datetime
    actor: str
    action: str
    target: str
    remote: str
    detail: dict[str, object]


def _new(row: ApiToken, plaintext: str) -> NewTokenOut:
    return NewTokenOut(
        id=row.id,
        name=row.name,
        role=row.role,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        token=plaintext,
    )


def _get(session: SessionDep, token_id: int) -> ApiToken:
    row = session.get(ApiToken, token_id)
    if row is None:
        raise NotFoundError(f"no token {token_id}")
    return row


@router.post("/tokens", status_code=201, response_model=NewTokenOut)
def new_token(body: TokenIn, request: Request, session: SessionDep, actor: Admin) -> NewTokenOut:
    ttl = timedelta(seconds=body.expires_in_s) if body.expires_in_s else None
    row, plaintext = create_token(session, body.name, body.role, ttl=ttl)
    audit(session, actor.name, "token.create", f"token:{row.id}", remote(request), role=body.role)
    session.commit()
    return _new(row, plaintext)


@router.get("/tokens", response_model=list[TokenOut])
def list_tokens(session: SessionDep, actor: Admin) -> list[ApiToken]:
    return list(session.scalars(select(ApiToken).order_by(ApiToken.id)))


@router.delete("/tokens/{token_id}", response_model=TokenOut)
def revoke_token(
    token_id: Annotated[int, Path(ge=1, le=2**31 - 1)],
    request: Request,
    session: SessionDep,
    actor: Admin,
) -> ApiToken:
    row = _get(session, token_id)
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        audit(session, actor.name, "token.revoke", f"token:{row.id}", remote(request))
        session.commit()
    return row


@router.post("/tokens/{token_id}/rotate", status_code=201, response_model=NewTokenOut)
def rotate_token(
    token_id: Annotated[int, Path(ge=1, le=2**31 - 1)],
    request: Request,
    session: SessionDep,
    actor: Admin,
) -> NewTokenOut:
    """Revoke a token and issue a new one with the same name, role and lifetime."""
    old = _get(session, token_id)
    ttl = (old.expires_at - old.created_at) if old.expires_at else None
    old.revoked_at = utcnow()
    row, plaintext = create_token(session, old.name, old.role, ttl=ttl)
    audit(session, actor.name, "token.rotate", f"token:{old.id}", remote(request), new=row.id)
    session.commit()
    return _new(row, plaintext)


@router.get("/audit", response_model=list[AuditOut])
def audit_log(
    session: SessionDep,
    actor: Admin,
    limit: int = Query(200, ge=1, le=1000),
    action: str | None = Query(None, max_length=80),
) -> list[AuditRecord]:
    """Who did what, when, from where."""
    stmt = select(AuditRecord).order_by(AuditRecord.id.desc()).limit(limit)
    if action:
        stmt = stmt.where(AuditRecord.action == action)
    return list(session.scalars(stmt))
