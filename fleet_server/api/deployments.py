"""Deployments of a model version to devices or a group."""

from __future__ import annotations

from collections import Counter

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from fleet_server.api.deps import Deployer, Reader, ServicesDep, SessionDep, remote
from fleet_server.auth import audit
from fleet_server.deployments import create_deployment, deployment_status
from fleet_server.exceptions import NotFoundError
from fleet_server.schemas import DeploymentIn, DeploymentOut, DeviceStatusOut
from fleet_server.tables import Deployment

router = APIRouter(prefix="/api/v1/deployments", tags=["deployments"])


def _out(session: SessionDep, dep: Deployment) -> DeploymentOut:
    rows = deployment_status(session, dep)
    return DeploymentOut(
        id=dep.id,
        model=dep.model,
        version=dep.version,
        target=dep.target,
        created_by=dep.created_by,
        created_at=dep.created_at,
        devices=[
            DeviceStatusOut(
                device=r.device_id,
                status=r.status,
                reason=r.reason,
                message=r.message,
                updated_at=r.updated_at,
            )
            for r in rows
        ],
        counts=dict(Counter(r.status for r in rows)),
    )


@router.post("", status_code=201, response_model=DeploymentOut)
async def deploy(
    body: DeploymentIn,
    request: Request,
    services: ServicesDep,
    session: SessionDep,
    actor: Deployer,
) -> DeploymentOut:
    """Sign new assignments for the target devices and tell them to update."""
    dep = await run_in_threadpool(
        create_deployment,
        services,
        session,
        actor=actor.name,
        model=body.model,
        version=body.version,
        devices=body.target.devices,
        group=body.target.group,
    )
    audit(
        session,
        actor.name,
        "deployment.create",
        dep.id,
        remote(request),
        model=body.model,
        version=body.version,
        target=body.target.model_dump(),
    )
    session.commit()
    return _out(session, dep)


@router.get("/{deployment_id}", response_model=DeploymentOut)
def show_deployment(deployment_id: str, session: SessionDep, actor: Reader) -> DeploymentOut:
    dep = session.get(Deployment, deployment_id)
    if dep is None:
        raise NotFoundError(f"no deployment {deployment_id!r}")
    return _out(session, dep)
