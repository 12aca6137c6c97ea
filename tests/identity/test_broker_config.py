"""Unit tests of the generated Mosquitto files and their packaging templates."""

from __future__ import annotations

import stat
from pathlib import Path
from string import Template

import pytest

from edge_agent.exceptions import ProtocolError
from fleet_server.broker_config import render_acl, write_acl, write_mosquitto_config
from fleet_server.ca import FleetCA

TEMPLATES = Path(__file__).resolve().parents[2] / "packaging" / "mosquitto"


def _directives(text: str) -> list[str]:
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


@pytest.fixture
def written(tmp_path: Path) -> tuple[FleetCA, Path]:
    ca = FleetCA.create(tmp_path / "ca")
    write_mosquitto_config(tmp_path / "broker", ca=ca, port=8883, user="mosquitto")
    return ca, tmp_path / "broker"


def test_templates_mirror_the_generated_files(written: tuple[FleetCA, Path]) -> None:
    _, out = written
    conf = Template((TEMPLATES / "production.conf.template").read_text()).substitute(
        USER="mosquitto",
        ACL_FILE=out / "acl",
        PERSISTENCE_DIR=out / "data",
        PORT=8883,
        BIND="0.0.0.0",
        CA_FILE=out / "ca.pem",
        CERT_FILE=out / "server.pem",
        KEY_FILE=out / "server.key",
        CRL_FILE=out / "crl.pem",
    )
    assert _directives(conf) == _directives((out / "mosquitto.conf").read_text())
    acl = Template((TEMPLATES / "production.acl.template").read_text()).substitute(
        SERVER_IDENTITY="fleet-server"
    )
    assert _directives(acl) == _directives((out / "acl").read_text())


def test_generated_config_locks_the_broker_down(written: tuple[FleetCA, Path]) -> None:
    _, out = written
    lines = set(_directives((out / "mosquitto.conf").read_text()))
    for must in (
        "allow_anonymous false",
        "require_certificate true",
        "use_identity_as_username true",
        "use_username_as_clientid true",
        "set_tcp_nodelay true",
        "per_listener_settings false",
    ):
        assert must in lines
    assert f"crlfile {out / 'crl.pem'}" in lines
    assert stat.S_IMODE((out / "server.key").stat().st_mode) == 0o600


def test_revoked_devices_get_a_deny_all_block_before_the_patterns(
    written: tuple[FleetCA, Path],
) -> None:
    _, out = written
    write_acl(out, ["dev-b", "dev-a", "dev-b"])
    lines = _directives((out / "acl").read_text())
    assert lines[:4] == ["user dev-a", "topic deny #", "user dev-b", "topic deny #"]
    assert lines.index("user fleet-server") > 3
    # Writing the whole config again keeps the revocations.
    ca = FleetCA.load(out.parent / "ca")
    write_mosquitto_config(out, ca=ca, port=8883, user="mosquitto")
    assert _directives((out / "acl").read_text())[:2] == ["user dev-a", "topic deny #"]
    write_acl(out, [])
    assert "topic deny #" not in (out / "acl").read_text()


def test_acl_refuses_injected_device_ids_and_device_named_server_identities() -> None:
    with pytest.raises(ProtocolError):
        render_acl(["fleet-server"], ["dev-a\ntopic readwrite #"])
    with pytest.raises(ValueError):
        write_acl(Path("/nonexistent"), [], server_identities=["dev-a"])
