"""The fleet CA: device certificates from CSRs, the broker's certificates, revocation (CRL).

Files in the CA directory::

    ca.key        EC P-256 private key (mode 0600, never leaves the server)
    ca.pem        self-signed CA certificate (what brokers and agents trust)
    revoked.json  revoked serials and the last CRL number (the CRL is rebuilt from it)

Errors for bad input from outside (a CSR, a certificate) raise ``CertificateError``, defined
here rather than in ``fleet_server.exceptions``. Checks are pure functions; only the
``FleetCA`` methods that say so touch the disk.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import ipaddress
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edge_agent.exceptions import ProtocolError
from edge_agent.fsutil import atomic_write
from edge_agent.protocol import validate_device_id

KEY_NAME = "ca.key"
CERT_NAME = "ca.pem"
REVOKED_NAME = "revoked.json"
# Certificate CNs that start with this are fleet-server identities with full broker rights
# (see fleet_server.broker_config); sign_csr never gives one to a device.
SERVER_IDENTITY_PREFIX = "fleet-server"
MAX_CSR_BYTES = 16 * 1024
MAX_DEVICE_CERT_DAYS = 825
CA_DAYS = 3650
# The broker reads the CRL from a local file, so an attacker cannot replay an old one; a short
# nextUpdate would only turn a missed refresh into a fleet-wide outage (OpenSSL refuses every
# client once the CRL has expired). Every revoke rewrites the CRL anyway.
CRL_DAYS = 365
_CLOCK_SKEW = dt.timedelta(minutes=5)


class CertificateError(ValueError):
    """A CSR or certificate from outside is malformed, badly signed or not acceptable."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _cn(name: x509.Name) -> str:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(attrs) != 1:
        raise CertificateError("certificate subject must hold exactly one common name")
    value = attrs[0].value
    return value if isinstance(value, str) else value.decode()


def cert_info(pem: bytes) -> tuple[str, int, dt.datetime]:
    """(device id = CN, serial, not_after in UTC) of a PEM certificate."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError as e:
        raise CertificateError(f"not a PEM certificate: {e}") from e
    return _cn(cert.subject), cert.serial_number, cert.not_valid_after_utc


def verify_csr(csr_pem: bytes, device_id: str) -> x509.CertificateSigningRequest:
    """Return the parsed CSR if it may be signed for ``device_id``; no I/O."""
    # Guards against memory exhaustion by a huge upload.
    if len(csr_pem) > MAX_CSR_BYTES:
        raise CertificateError("CSR too large")
    # Guards against topic injection (+, #, /) and path tricks through the CN, which the
    # broker uses as username and client id in ACL patterns.
    try:
        validate_device_id(device_id)
    except ProtocolError as e:
        raise CertificateError(str(e)) from e
    # Guards against a device obtaining the fleet server's broker identity.
    if device_id.startswith(SERVER_IDENTITY_PREFIX):
        raise CertificateError(f"device id {device_id!r} is reserved for the fleet server")
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as e:
        raise CertificateError(f"not a PEM certificate signing request: {e}") from e
    # Guards against a CSR for a key the requester does not hold (proof of possession).
    try:
        valid = csr.is_signature_valid
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise CertificateError(f"CSR signature cannot be checked: {e}") from e
    if not valid:
        raise CertificateError("CSR signature does not match its public key")
    # Guards against weak or exotic device keys that the broker's TLS may not refuse.
    try:
        key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm) as e:
        raise CertificateError(f"CSR public key unreadable: {e}") from e
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, (ec.SECP256R1, ec.SECP384R1)):
            raise CertificateError(f"EC curve {key.curve.name} is not accepted (P-256, P-384)")
    elif isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise CertificateError(f"RSA key of {key.key_size} bits is too weak (2048 minimum)")
    else:
        raise CertificateError(f"key type {type(key).__name__} is not accepted (EC or RSA)")
    return csr


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class FleetCA:
    """The fleet's certificate authority, kept in one directory."""

    def __init__(
        self, directory: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate
    ) -> None:
        self.directory = directory
        self._key = key
        self.certificate = cert

    # -- files -----------------------------------------------------------------------------

    @property
    def key_path(self) -> Path:
        return self.directory / KEY_NAME

    @property
    def cert_path(self) -> Path:
        return self.directory / CERT_NAME

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @classmethod
    def create(cls, directory: Path, *, name: str = "edgefleet fleet CA") -> FleetCA:
        """Make a new CA key and self-signed certificate in ``directory`` (must not hold one)."""
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        if (directory / KEY_NAME).exists():
            raise FileExistsError(f"{directory / KEY_NAME} exists: refusing to replace a CA")
        key = new_key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = _now()
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        # The key is written first (0600 from the start); ca.pem marks a complete CA.
        atomic_write(directory / KEY_NAME, key_pem(key), 0o600)
        atomic_write(directory / CERT_NAME, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        return cls(directory, key, cert)

    @classmethod
    def load(cls, directory: Path) -> FleetCA:
        key = serialization.load_pem_private_key((directory / KEY_NAME).read_bytes(), None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise RuntimeError(f"{directory / KEY_NAME} is not an EC key")
        cert = x509.load_pem_x509_certificate((directory / CERT_NAME).read_bytes())
        if cert.public_key() != key.public_key():
            raise RuntimeError(f"{directory} holds a CA key and certificate that do not match")
        return cls(directory, key, cert)

    # -- issuing ---------------------------------------------------------------------------

    def _issue(
        self,
        cn: str,
        public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
        *,
        days: int,
        eku: x509.ObjectIdentifier,
        sans: Sequence[x509.GeneralName] = (),
    ) -> x509.Certificate:
        if not 1 <= days <= MAX_DEVICE_CERT_DAYS:
            raise ValueError(f"days must be within 1..{MAX_DEVICE_CERT_DAYS}")
        now = _now()
        # A certificate never outlives the CA that vouches for it.
        not_after = min(now + dt.timedelta(days=days), self.certificate.not_valid_after_utc)
        ca_ski = self.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(not_after)
            # Guards against a leaf certificate signing certificates of its own.
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            # Guards against a device certificate serving as a broker certificate (and back).
            .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski.value),
                critical=False,
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
        return builder.sign(self._key, hashes.SHA256())

    def sign_csr(self, csr_pem: bytes, device_id: str, *, days: int = 90) -> bytes:
        """Sign a device's CSR; the certificate's CN is ``device_id``, whatever the CSR says."""
        csr = verify_csr(csr_pem, device_id)
        public_key = csr.public_key()
        assert isinstance(public_key, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey))
        # The CSR's subject and requested extensions are ignored on purpose: guards against a
        # device choosing its own identity, asking for CA rights or for extra names.
        cert = self._issue(device_id, public_key, days=days, eku=ExtendedKeyUsageOID.CLIENT_AUTH)
        return cert.public_bytes(serialization.Encoding.PEM)

    def issue_server_cert(
        self, hostnames: Sequence[str] = ("localhost", "127.0.0.1"), *, days: int = 825
    ) -> tuple[bytes, bytes]:
        """(cert PEM, key PEM) for the broker's TLS listener; IP literals become IP SANs."""
        if not hostnames:
            raise ValueError("at least one host name is needed")
        sans: list[x509.GeneralName] = []
        for host in hostnames:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        key = new_key()
        cert = self._issue(
            hostnames[0],
            key.public_key(),
            days=days,
            eku=ExtendedKeyUsageOID.SERVER_AUTH,
            sans=sans,
        )
        return cert.public_bytes(serialization.Encoding.PEM), key_pem(key)

    def issue_client_cert_for_server(
        self, name: str = SERVER_IDENTITY_PREFIX, *, days: int = 365
    ) -> tuple[bytes, bytes]:
        """(cert PEM, key PEM) of a fleet-server MQTT identity (CN ``name``, clientAuth)."""
        if not name.startswith(SERVER_IDENTITY_PREFIX):
            raise ValueError(f"server identities start with {SERVER_IDENTITY_PREFIX!r}")
        validate_device_id(name)  # same charset: it is a topic level in ACL patterns
        key = new_key()
        cert = self._issue(name, key.public_key(), days=days, eku=ExtendedKeyUsageOID.CLIENT_AUTH)
        return cert.public_bytes(serialization.Encoding.PEM), key_pem(key)

    cert_info = staticmethod(cert_info)

    # -- revocation ------------------------------------------------------------------------

    @property
    def _revoked_path(self) -> Path:
        return self.directory / REVOKED_NAME

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, object]]:
        """The revocation state, read and written under an exclusive lock across processes."""
        with (self.directory / ".revoked.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                state: dict[str, object] = {"crl_number": 0, "revoked": {}}
                if self._revoked_path.exists():
                    state = json.loads(self._revoked_path.read_text())
                before = json.dumps(state, sort_keys=True)
                yield state
                if json.dumps(state, sort_keys=True) != before:
                    data = json.dumps(state, indent=1, sort_keys=True).encode()
                    atomic_write(self._revoked_path, data, 0o644)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def revoke(self, serial: int) -> None:
        """Add ``serial`` to the persisted revocation list (idempotent)."""
        with self._locked() as state:
            revoked = state["revoked"]
            assert isinstance(revoked, dict)
            revoked.setdefault(str(int(serial)), _now().isoformat())

    def revoked_serials(self) -> frozenset[int]:
        with self._locked() as state:
            revoked = state["revoked"]
            assert isinstance(revoked, dict)
            return frozenset(int(s) for s in revoked)

    def crl_pem(self, *, days: int = CRL_DAYS) -> bytes:
        """A fresh CRL of every revoked serial, signed by the CA (the CRL number grows)."""
        now = _now()
        with self._locked() as state:
            number = state["crl_number"]
            revoked = state["revoked"]
            assert isinstance(number, int) and isinstance(revoked, dict)
            number += 1
            state["crl_number"] = number
            entries = dict(revoked)
        ca_ski = self.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.certificate.subject)
            .last_update(now - _CLOCK_SKEW)
            .next_update(now + dt.timedelta(days=days))
            .add_extension(x509.CRLNumber(number), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski.value),
                critical=False,
            )
        )
        for serial, when in sorted(entries.items()):
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(int(serial))
                .revocation_date(dt.datetime.fromisoformat(str(when)))
                .build()
            )
        crl = builder.sign(self._key, hashes.SHA256())
        return crl.public_bytes(serialization.Encoding.PEM)
