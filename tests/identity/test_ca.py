"""Unit tests of the fleet CA: CSR signing, what a certificate says, CRL content."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleet_server.ca import CertificateError, FleetCA, cert_info


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> FleetCA:
    return FleetCA.create(tmp_path_factory.mktemp("ca") / "ca")


def _csr(
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
    cn: str = "whatever",
    *,
    ask_for_ca: bool = False,
) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    )
    if ask_for_ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("broker.example")]), False
        )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def _p256() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def test_ca_key_is_private_and_the_ca_reloads(ca: FleetCA) -> None:
    assert stat.S_IMODE(ca.key_path.stat().st_mode) == 0o600
    again = FleetCA.load(ca.directory)
    assert again.cert_pem == ca.cert_pem
    bc = again.certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.ca


def test_create_refuses_to_replace_an_existing_ca(ca: FleetCA) -> None:
    with pytest.raises(FileExistsError):
        FleetCA.create(ca.directory)


def test_signed_certificate_cn_is_the_device_id_whatever_the_csr_asks(ca: FleetCA) -> None:
    key = _p256()
    pem = ca.sign_csr(_csr(key, "fleet-server", ask_for_ca=True), "dev-1", days=30)
    cert = x509.load_pem_x509_certificate(pem)
    assert cert.subject == x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dev-1")])
    assert cert.public_key() == key.public_key()
    cert.verify_directly_issued_by(ca.certificate)
    # The CSR's requested extensions are ignored: no CA rights, no extra names.
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    device_id, serial, not_after = cert_info(pem)
    assert (device_id, serial) == ("dev-1", cert.serial_number)
    now = dt.datetime.now(dt.timezone.utc)
    assert dt.timedelta(days=29) < not_after - now <= dt.timedelta(days=30)


def test_csr_for_a_key_the_requester_does_not_hold_is_refused(ca: FleetCA) -> None:
    # The attacker signs a CSR with its own key, then swaps in the victim's public key.
    mine, victim = _p256(), _p256()
    der = x509.load_pem_x509_csr(_csr(mine)).public_bytes(serialization.Encoding.DER)
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    mine_spki = mine.public_key().public_bytes(*spki)
    victim_spki = victim.public_key().public_bytes(*spki)
    assert der.count(mine_spki) == 1 and len(mine_spki) == len(victim_spki)
    forged = x509.load_der_x509_csr(der.replace(mine_spki, victim_spki))
    with pytest.raises(CertificateError, match="signature"):
        ca.sign_csr(forged.public_bytes(serialization.Encoding.PEM), "dev-2")


@pytest.mark.parametrize(
    "device_id", ["fleet-server", "fleet-server-2", "dev/+", "Dev", "#", "", "a" * 64, "../x"]
)
def test_reserved_or_unsafe_device_ids_are_refused(ca: FleetCA, device_id: str) -> None:
    with pytest.raises(CertificateError):
        ca.sign_csr(_csr(_p256()), device_id)


def test_garbage_and_weak_keys_are_refused(ca: FleetCA) -> None:
    with pytest.raises(CertificateError):
        ca.sign_csr(b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n", "dev-3")
    with pytest.raises(CertificateError, match="too large"):
        ca.sign_csr(b"x" * 100_000, "dev-3")
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(CertificateError, match="too weak"):
        ca.sign_csr(_csr(weak), "dev-3")
    with pytest.raises(CertificateError, match="curve"):
        ca.sign_csr(_csr(ec.generate_private_key(ec.SECP256K1())), "dev-3")


def test_server_certificates_have_the_right_purpose_and_names(ca: FleetCA) -> None:
    cert = x509.load_pem_x509_certificate(ca.issue_server_cert()[0])
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    client_pem, key_pem = ca.issue_client_cert_for_server()
    assert cert_info(client_pem)[0] == "fleet-server"
    assert serialization.load_pem_private_key(key_pem, None)
    with pytest.raises(ValueError):
        ca.issue_client_cert_for_server("dev-4")  # a device name would get server rights


def test_crl_lists_revoked_serials_is_signed_and_survives_reload(tmp_path: Path) -> None:
    ca = FleetCA.create(tmp_path / "ca")
    ca_key = ca.certificate.public_key()
    assert isinstance(ca_key, ec.EllipticCurvePublicKey)
    first = x509.load_pem_x509_crl(ca.crl_pem())
    assert len(first) == 0 and first.is_signature_valid(ca_key)
    serials = [cert_info(ca.sign_csr(_csr(_p256()), f"dev-{i}"))[1] for i in range(3)]
    ca.revoke(serials[0])
    ca.revoke(serials[2])
    ca.revoke(serials[2])  # idempotent
    crl = x509.load_pem_x509_crl(FleetCA.load(ca.directory).crl_pem())
    assert crl.is_signature_valid(ca_key)
    assert crl.issuer == ca.certificate.subject
    assert {r.serial_number for r in crl} == {serials[0], serials[2]}
    assert crl.get_revoked_certificate_by_serial_number(serials[1]) is None
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert number > first.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert crl.next_update_utc is not None
    assert crl.next_update_utc > dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=300)
    assert FleetCA.load(ca.directory).revoked_serials() == {serials[0], serials[2]}
