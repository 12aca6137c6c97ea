"""FastAPI dependencies as ``Annotated`` aliases."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from fleet_server.auth import Actor, authenticate
from fleet_server.services import FleetServices

_bearer = HTTPBearer(auto_error=False)


def get_services(request: Request) -> FleetServices:
    services: FleetServices = request.app.state.services
    return services


ServicesDep = Annotated[FleetServices, Depends(get_services)]


def get_session(services: ServicesDep) -> Iterator[Session]:
    with services.db.session() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def get_actor(
    session: SessionDep,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Actor:
    # 401 for a missing, malformed, unknown, expired or revoked token: no detail on which.
    actor = authenticate(session, creds.credentials) if creds else None
    if actor is None:
        raise HTTPException(401, "missing or invalid token", {"WWW-Authenticate": "Bearer"})
    return actor


CurrentActor = Annotated[Actor, Depends(get_actor)]


def require(permission: str) -> object:
    def check(actor: CurrentActor) -> Actor:
        if not actor.may(permission):
            raise HTTPException(403, f"role {actor.role!r} may not {permission}")
        return actor

    return Depends(check)


def remote(request: Request) -> str:
    return request.client.host if request.client else ""


Reader = Annotated[Actor, require("read")]
Publisher = Annotated[Actor, require("publish")]
Deployer = Annotated[Actor, require("deploy")]
Enroller = Annotated[Actor, require("enroll")]
Revoker = Annotated[Actor, require("revoke")]
Admin = Annotated[Actor, require("admin")]
