"""Enrollment tokens (for operators) and device enrollment (for agents)."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from fleet_server.api.deps import Enroller, ServicesDep, SessionDep, remote
from fleet_server.auth import audit
from fleet_server.enrollment import create_enrollment_token, enroll_device, renew_certificate
from fleet_server.schemas import (
    EnrollIn,
    EnrollmentTokenIn,
    EnrollmentTokenOut,
    EnrollOut,
    RenewIn,
    RenewOut,
)

router = APIRouter(prefix="/api/v1", tags=["enrollment"])


@router.post("/enrollment-tokens", status_code=201, response_model=EnrollmentTokenOut)
def new_enrollment_token(
    body: EnrollmentTokenIn, request: Request, session: SessionDep, actor: Enroller
) -> EnrollmentTokenOut:
    """A one-time token a device operator passes to `edge-agent enroll`."""
    row, token = create_enrollment_token(
        session, created_by=actor.name, group=body.group, ttl=timedelta(seconds=body.expires_in_s)
    )
    audit(
        session,
        actor.name,
        "enrollment_token.create",
        f"token:{row.id}",
        remote(request),
        group=body.group,
    )
    session.commit()
    return EnrollmentTokenOut(token=token, group=row.group, expires_at=row.expires_at)


@router.post("/enroll", status_code=201, response_model=EnrollOut)
async def enroll(
    body: EnrollIn, request: Request, services: ServicesDep, session: SessionDep
) -> EnrollOut:
    """Called by the agent: a one-time token and a CSR buy a certificate and the trust root."""
    out = await run_in_threadpool(
        enroll_device,
        services,
        session,
        token=body.token,
        csr_pem=body.csr.encode(),
        name=body.name,
    )
    audit(session, f"device:{out.device_id}", "device.enroll", out.device_id, remote(request))
    session.commit()
    return out


@router.post("/devices/{device_id}/certificate", response_model=RenewOut)
def renew(
    device_id: str, body: RenewIn, request: Request, services: ServicesDep, session: SessionDep
) -> RenewOut:
    """Called by the agent before its certificate expires. Authenticated by possession of
    the device key: the CSR must carry the key of the current certificate on record."""
    cert = renew_certificate(
        services,
        session,
        device_id=device_id,
        csr_pem=body.csr.encode(),
        current_pem=body.certificate.encode(),
    )
    audit(session, f"device:{device_id}", "device.renew", device_id, remote(request))
    session.commit()
    return RenewOut(certificate=cert.decode(), ca_certificate=services.ca.cert_pem.decode())
