"""The device's own identity: a key made here, a certificate from the fleet CA, the CA itself.

Files in the identity directory (mode 0700), the ones mutual TLS needs::

    key.pem   EC P-256 private key, mode 0600; it never leaves the device
    cert.pem  the device certificate (CN = device id, set by the fleet CA)
    ca.pem    the fleet CA certificate: the only issuer the agent trusts for the broker

Every file is written atomically (temp file, fsync, ``os.replace``, fsync the directory).
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edge_agent.exceptions import ConfigError, EnrollmentError
from edge_agent.fsutil import atomic_write

KEY_NAME = "key.pem"
CERT_NAME = "cert.pem"
CA_NAME = "ca.pem"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def check_certificate(
    cert_pem: bytes, ca_pem: bytes, public_key: ec.EllipticCurvePublicKey
) -> tuple[x509.Certificate, x509.Certificate]:
    """Parse and check a certificate the server sent for this device's key; no I/O."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        ca = x509.load_pem_x509_certificate(ca_pem)
    except ValueError as e:
        raise EnrollmentError(f"the server sent an unreadable certificate: {e}") from e
    # Guards against installing a certificate for another key: TLS would fail later, far
    # from the cause, or the device would present someone else's identity.
    if cert.public_key() != public_key:
        raise EnrollmentError("the certificate is not for this device's key")
    # Guards against a trust anchor that is not a CA, or a certificate it did not sign.
    try:
        bc = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is None or not bc.ca:
        raise EnrollmentError("the CA certificate is not a CA")
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as e:
        raise EnrollmentError(f"the certificate is not signed by the fleet CA: {e}") from e
    # Guards against a certificate the broker will refuse for client authentication.
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        eku = None
    if eku is not None and ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
        raise EnrollmentError("the certificate is not valid for client authentication")
    if cert.not_valid_after_utc <= _now():
        raise EnrollmentError("the certificate has already expired")
    return cert, ca


class DeviceIdentity:
    """Key, certificate and fleet CA of this device, kept in one directory."""

    def __init__(self, directory: Path, key: ec.EllipticCurvePrivateKey) -> None:
        self.directory = directory
        self._key = key

    @property
    def key_path(self) -> Path:
        return self.directory / KEY_NAME

    @property
    def cert_path(self) -> Path:
        return self.directory / CERT_NAME

    @property
    def ca_path(self) -> Path:
        return self.directory / CA_NAME

    @classmethod
    def generate(cls, directory: Path) -> DeviceIdentity:
        """Make a new device key in ``directory``; refuses to replace an enrolled identity."""
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        # A key without a certificate is a left-over from a failed enrollment: replace it.
        # A certificate means an enrolled identity that only its owner may throw away.
        if (directory / CERT_NAME).exists():
            raise FileExistsError(f"{directory} already holds an enrolled identity")
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        atomic_write(directory / KEY_NAME, pem, mode=0o600)  # temp file is 0600 from the start
        return cls(directory, key)

    @classmethod
    def load(cls, directory: Path) -> DeviceIdentity:
        try:
            key = serialization.load_pem_private_key((directory / KEY_NAME).read_bytes(), None)
        except (OSError, ValueError, TypeError) as e:
            raise ConfigError(f"cannot read the device key in {directory}: {e}") from e
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"{directory / KEY_NAME} is not an EC key")
        return cls(directory, key)

    def csr_pem(self, device_name: str) -> bytes:
        """A CSR signed by the device key; the fleet CA sets the real CN (the device id)."""
        if not 1 <= len(device_name) <= 64:
            raise ValueError("device name must have 1 to 64 characters")
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_name)]))
            .sign(self._key, hashes.SHA256())
        )
        return csr.public_bytes(serialization.Encoding.PEM)

    def save_certificate(self, cert_pem: bytes, ca_pem: bytes) -> None:
        """Check and store the certificate and the fleet CA the server sent."""
        check_certificate(cert_pem, ca_pem, self._key.public_key())
        # The CA first: a present cert.pem then always has its ca.pem.
        atomic_write(self.ca_path, ca_pem, mode=0o644)
        atomic_write(self.cert_path, cert_pem, mode=0o644)

    @property
    def enrolled(self) -> bool:
        return self.cert_path.exists() and self.ca_path.exists()

    @property
    def certificate(self) -> x509.Certificate:
        try:
            return x509.load_pem_x509_certificate(self.cert_path.read_bytes())
        except (OSError, ValueError) as e:
            raise ConfigError(f"no readable device certificate in {self.directory}: {e}") from e

    @property
    def device_id(self) -> str:
        attrs = self.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        value = attrs[0].value if attrs else ""
        return value if isinstance(value, str) else value.decode()

    @property
    def not_after(self) -> dt.datetime:
        return self.certificate.not_valid_after_utc

    def needs_renewal(self, within_days: float, *, now: dt.datetime | None = None) -> bool:
        """True when the certificate expires within ``within_days`` (or has expired)."""
        now = now or _now()
        return self.not_after - now <= dt.timedelta(days=within_days)
