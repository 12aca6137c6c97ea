"""One-time enrollment tokens and device enrollment."""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from edge_agent import protocol
from edge_agent.exceptions import ProtocolError
from fleet_server.auth import hash_token, new_secret
from fleet_server.exceptions import ConflictError, EnrollmentRefusedError, InvalidRequestError
from fleet_server.schemas import EnrollOut
from fleet_server.tables import Device, EnrollmentToken, utcnow

if TYPE_CHECKING:
    from fleet_server.services import FleetServices

ENROLL_PREFIX = "efe_"


def create_enrollment_token(
    session: Session, *, created_by: str, group: str, ttl: timedelta
) -> tuple[EnrollmentToken, str]:
    token = new_secret(ENROLL_PREFIX)
    row = EnrollmentToken(
        token_hash=hash_token(token),
        group=group,
        created_by=created_by,
        expires_at=utcnow() + ttl,
    )
    session.add(row)
    session.flush()
    return row, token


def enroll_device(
    services: FleetServices, session: Session, *, token: str, csr_pem: bytes, name: str | None
) -> EnrollOut:
    from fleet_server.ca import CertificateError, cert_info

    row = session.scalar(
        select(EnrollmentToken)
        .where(EnrollmentToken.token_hash == hash_token(token))
        .with_for_update()
    )
    # One message for every refusal: an attacker learns nothing about which tokens exist.
    if row is None or row.used_at is not None or _aware(row.expires_at) <= utcnow():
        raise EnrollmentRefusedError("enrollment token is unknown, used or expired")
    device_id = name or "dev-" + secrets.token_hex(4)
    try:
        protocol.validate_device_id(device_id)
    except ProtocolError as e:
        raise InvalidRequestError(str(e)) from e
    if session.get(Device, device_id) is not None:
        raise ConflictError(f"a device named {device_id!r} is already enrolled")
    try:
        cert = services.ca.sign_csr(csr_pem, device_id, days=services.settings.cert_days)
    except CertificateError as e:
        raise InvalidRequestError(f"bad certificate signing request: {e}") from e
    _, serial, not_after = cert_info(cert)
    # Single use: the token is spent in the same transaction that creates the device.
    row.used_at = utcnow()
    row.device_id = device_id
    session.add(
        Device(id=device_id, group=row.group, cert_serial=str(serial), cert_not_after=not_after)
    )
    session.flush()
    return EnrollOut(
        device_id=device_id,
        certificate=cert.decode(),
        ca_certificate=services.ca.cert_pem.decode(),
        mqtt_url=services.agent_mqtt_url,
        tuf_root=services.tuf.root_bytes().decode(),
        api_url=services.settings.api_url,
    )


def _aware(dt: datetime) -> datetime:
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)
