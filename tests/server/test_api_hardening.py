"""API hardening: body limits, rate limits, mass assignment, token lifecycle, audit log."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.fleet import RunningServer, running_server


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch_module: pytest.MonkeyPatch
) -> Iterator[RunningServer]:
    monkeypatch_module.setenv("FLEET_SERVER_PUBLISH_RATE_PER_MINUTE", "3")
    monkeypatch_module.setenv("FLEET_SERVER_MAX_UPLOAD_BYTES", "200000")
    with running_server(tmp_path_factory.mktemp("server")) as f:
        yield f


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def _h(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_oversized_json_body_is_413(fleet: RunningServer) -> None:
    big = {"group": "x" * (2 * 1024 * 1024)}
    r = httpx.post(f"{fleet.url}/api/v1/enrollment-tokens", json=big, headers=_h(fleet.token))
    assert r.status_code == 413


def test_oversized_upload_is_413_and_registers_nothing(fleet: RunningServer) -> None:
    r = httpx.post(
        f"{fleet.url}/api/v1/models/big/versions",
        headers=_h(fleet.token),
        files={"file": ("m.onnx", b"\0" * 300_000)},
        timeout=60,
    )
    assert r.status_code == 413
    assert all(m["name"] != "big" for m in fleet.client.models())


def test_unknown_or_server_owned_fields_are_refused(fleet: RunningServer) -> None:
    r = httpx.post(
        f"{fleet.url}/api/v1/enrollment-tokens",
        headers=_h(fleet.token),
        json={"group": "", "used_at": "2020-01-01", "created_by": "someone-else"},
    )
    assert r.status_code == 422
    r = httpx.post(
        f"{fleet.url}/api/v1/deployments",
        headers=_h(fleet.token),
        json={"model": "m", "version": 1, "target": {"devices": ["d"]}, "created_by": "mallory"},
    )
    assert r.status_code == 422


def test_expensive_publish_is_rate_limited(fleet: RunningServer) -> None:
    codes = [
        httpx.post(
            f"{fleet.url}/api/v1/models/junk/versions",
            headers=_h(fleet.token),
            files={"file": ("m.onnx", b"junk")},
            timeout=60,
        ).status_code
        for _ in range(6)
    ]
    assert 429 in codes and codes[0] != 429


def test_token_rotation_revocation_and_audit(fleet: RunningServer) -> None:
    r = httpx.post(
        f"{fleet.url}/api/v1/tokens",
        headers=_h(fleet.token),
        json={"name": "ci", "role": "publisher", "expires_in_s": 3600},
    )
    assert r.status_code == 201
    first = r.json()
    assert httpx.get(f"{fleet.url}/api/v1/models", headers=_h(first["token"])).status_code == 200
    r = httpx.post(f"{fleet.url}/api/v1/tokens/{first['id']}/rotate", headers=_h(fleet.token))
    second = r.json()
    assert r.status_code == 201 and second["role"] == "publisher"
    assert httpx.get(f"{fleet.url}/api/v1/models", headers=_h(first["token"])).status_code == 401
    assert httpx.get(f"{fleet.url}/api/v1/models", headers=_h(second["token"])).status_code == 200
    assert (
        httpx.delete(
            f"{fleet.url}/api/v1/tokens/{second['id']}", headers=_h(fleet.token)
        ).status_code
        == 200
    )
    assert httpx.get(f"{fleet.url}/api/v1/models", headers=_h(second["token"])).status_code == 401
    # Plaintext tokens are never listed; every change is in the audit log with its origin.
    listed = httpx.get(f"{fleet.url}/api/v1/tokens", headers=_h(fleet.token)).json()
    assert all("token" not in t for t in listed)
    audit = httpx.get(f"{fleet.url}/api/v1/audit", headers=_h(fleet.token)).json()
    actions = [a["action"] for a in audit]
    assert {"token.create", "token.rotate", "token.revoke"} <= set(actions)
    assert all(
        a["actor"] == "admin" and a["remote"] == "127.0.0.1"
        for a in audit
        if a["action"].startswith("token.")
    )


def test_metrics_endpoint_reports_fleet_gauges(fleet: RunningServer) -> None:
    text = httpx.get(f"{fleet.url}/metrics").text
    assert "edgefleet_devices" in text and "edgefleet_mqtt_connected 1.0" in text


def test_openapi_documents_examples(fleet: RunningServer, tmp_path: Path) -> None:
    schema = httpx.get(f"{fleet.url}/openapi.json").json()
    assert "/api/v1/deployments" in schema["paths"]
    assert "examples" in schema["components"]["schemas"]["DeploymentIn"]
