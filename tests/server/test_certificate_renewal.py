"""Certificate renewal: only the holder of the device key renews, revoked devices never."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from edge_agent.enroll import enroll
from edge_agent.exceptions import EnrollmentError
from edge_agent.identity import DeviceIdentity
from edge_agent.renewal import renew_if_due
from tests.support.fleet import running_server


def test_device_renews_with_its_own_key_and_others_cannot(tmp_path: Path) -> None:
    with running_server(tmp_path / "server") as fleet:
        agent_dir = tmp_path / "agent"
        enroll(fleet.url, fleet.client.enrollment_token(), agent_dir, name="dev-r")
        ident_dir = agent_dir / "identity"
        before = DeviceIdentity.load(ident_dir).certificate.serial_number

        # Not due yet: nothing happens.
        assert renew_if_due(fleet.url, "dev-r", ident_dir, within_days=1) is False
        # Due (window larger than the lifetime): renewed, same key, new serial.
        assert renew_if_due(fleet.url, "dev-r", ident_dir, within_days=3650) is True
        after = DeviceIdentity.load(ident_dir)
        assert after.certificate.serial_number != before
        assert fleet.client.device("dev-r")["cert_not_after"] is not None

        # An attacker with the certificate but another key: refused.
        thief = DeviceIdentity.generate(tmp_path / "thief")
        r = httpx.post(
            f"{fleet.url}/api/v1/devices/dev-r/certificate",
            json={
                "csr": thief.csr_pem("dev-r").decode(),
                "certificate": after.cert_path.read_text(),
            },
        )
        assert r.status_code == 403

        # A revoked device cannot renew.
        fleet.client.revoke("dev-r")
        with pytest.raises(EnrollmentError):
            renew_if_due(fleet.url, "dev-r", ident_dir, within_days=3650)


def test_enrollment_token_is_single_use(tmp_path: Path) -> None:
    with running_server(tmp_path / "server") as fleet:
        token = fleet.client.enrollment_token()
        enroll(fleet.url, token, tmp_path / "a", name="dev-a")
        with pytest.raises(EnrollmentError, match="403"):
            enroll(fleet.url, token, tmp_path / "b", name="dev-b")
