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


def renew_certificate(
    services: FleetServices,
    session: Session,
    *,
    device_id: str,
    csr_pem: bytes,
    current_pem: bytes,
) -> bytes:
    """Issue a new certificate for the key of a device's current, valid certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    from fleet_server.ca import CertificateError, cert_info, verify_csr

    device = session.get(Device, device_id)
    refused = EnrollmentRefusedError("certificate renewal refused")
    if device is None or device.revoked_at is not None:
        raise refused
    try:
        cn, serial, not_after = cert_info(current_pem)
        current = x509.load_pem_x509_certificate(current_pem)
        csr = verify_csr(csr_pem, device_id)
        ca_key = services.ca.certificate.public_key()
        assert isinstance(ca_key, ec.EllipticCurvePublicKey)
        # Guards against a forged "current" certificate: the fleet CA must have signed it.
        current.verify_directly_issued_by(services.ca.certificate)
    except (CertificateError, ValueError, TypeError) as e:
        raise InvalidRequestError(f"bad renewal request: {e}") from e
    # Guards against renewing someone else's, an old or an expired certificate: it must be
    # the one on record for this device and still valid.
    if cn != device_id or str(serial) != device.cert_serial or not_after <= utcnow():
        raise refused
    if serial in services.ca.revoked_serials():
        raise refused
    # Proof of possession: the CSR (signed by its key, checked by verify_csr) must carry the
    # same public key as the current certificate, so a stolen certificate alone buys nothing.
    if csr.public_key().public_numbers() != current.public_key().public_numbers():  # type: ignore[union-attr]
        raise refused
    cert = services.ca.sign_csr(csr_pem, device_id, days=services.settings.cert_days)
    _, new_serial, new_not_after = cert_info(cert)
    device.cert_serial, device.cert_not_after = str(new_serial), new_not_after
    return cert
