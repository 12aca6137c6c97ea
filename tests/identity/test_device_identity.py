"""Unit tests of the device identity: key at rest, CSR, certificate checks, renewal window."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

import pytest
from cryptography import x509

from edge_agent.exceptions import EnrollmentError
from edge_agent.identity import DeviceIdentity
from fleet_server.ca import FleetCA


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> FleetCA:
    return FleetCA.create(tmp_path_factory.mktemp("ca") / "ca")


def test_key_is_made_on_the_device_private_and_written_atomically(tmp_path: Path) -> None:
    ident = DeviceIdentity.generate(tmp_path / "id")
    assert stat.S_IMODE(ident.key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(ident.directory.stat().st_mode) == 0o700
    assert sorted(p.name for p in ident.directory.iterdir()) == ["key.pem"]  # no temp files
    csr = x509.load_pem_x509_csr(ident.csr_pem("edge-device"))
    assert csr.is_signature_valid
    assert csr.public_key() == DeviceIdentity.load(ident.directory)._key.public_key()


def test_enrolled_identity_round_trip(tmp_path: Path, ca: FleetCA) -> None:
    ident = DeviceIdentity.generate(tmp_path / "id")
    ident.save_certificate(ca.sign_csr(ident.csr_pem("x"), "dev-7", days=90), ca.cert_pem)
    again = DeviceIdentity.load(ident.directory)
    assert again.enrolled and again.device_id == "dev-7"
    assert again.ca_path.read_bytes() == ca.cert_pem
    with pytest.raises(FileExistsError):  # an enrolled key is never silently replaced
        DeviceIdentity.generate(ident.directory)


def test_certificate_for_another_key_is_refused(tmp_path: Path, ca: FleetCA) -> None:
    ident = DeviceIdentity.generate(tmp_path / "id")
    other = DeviceIdentity.generate(tmp_path / "other")
    cert = ca.sign_csr(other.csr_pem("x"), "dev-8")
    with pytest.raises(EnrollmentError, match="this device's key"):
        ident.save_certificate(cert, ca.cert_pem)
    assert not ident.cert_path.exists()


def test_certificate_not_signed_by_the_given_ca_is_refused(tmp_path: Path, ca: FleetCA) -> None:
    rogue = FleetCA.create(tmp_path / "rogue")
    ident = DeviceIdentity.generate(tmp_path / "id")
    cert = rogue.sign_csr(ident.csr_pem("x"), "dev-9")
    with pytest.raises(EnrollmentError, match="not signed"):
        ident.save_certificate(cert, ca.cert_pem)
    # A leaf certificate handed over as the "CA" is refused too.
    with pytest.raises(EnrollmentError, match="not a CA"):
        ident.save_certificate(cert, cert)
    with pytest.raises(EnrollmentError, match="unreadable"):
        ident.save_certificate(b"junk", ca.cert_pem)


def test_renewal_window(tmp_path: Path, ca: FleetCA) -> None:
    ident = DeviceIdentity.generate(tmp_path / "id")
    ident.save_certificate(ca.sign_csr(ident.csr_pem("x"), "dev-10", days=30), ca.cert_pem)
    now = dt.datetime.now(dt.timezone.utc)
    assert dt.timedelta(days=29) < ident.not_after - now <= dt.timedelta(days=30)
    assert not ident.needs_renewal(20)
    assert ident.needs_renewal(31)
    assert ident.needs_renewal(20, now=now + dt.timedelta(days=11))
    assert ident.needs_renewal(0, now=now + dt.timedelta(days=31))  # expired
