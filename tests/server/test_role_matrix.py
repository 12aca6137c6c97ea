"""Every API endpoint against every role: 401 without a valid token, 403 beyond the role,
and neither for a role that may call it. A new endpoint missing from the table fails."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
from fastapi.routing import APIRoute

from fleet_server.auth import ROLES, create_token
from fleet_server.db import Database
from fleet_server.settings import Settings
from tests.support.fleet import RunningServer, running_server

# (method, path, permission, json body). Permission "device" = no bearer token, the device
# proves itself otherwise (one-time token, key possession); "open" = no auth by design.
ENDPOINTS: list[tuple[str, str, str, object]] = [
    ("GET", "/api/v1/models", "read", None),
    ("GET", "/api/v1/models/m/versions", "read", None),
    ("GET", "/api/v1/models/m/versions/1", "read", None),
    ("POST", "/api/v1/models/m/versions", "publish", None),
    ("PUT", "/api/v1/models/m/versions/1/stage", "publish", {"stage": "staging"}),
    ("PUT", "/api/v1/models/m/versions/1/tags", "publish", {"tags": ["a"]}),
    ("POST", "/api/v1/models/m/versions/1/tags", "publish", {"tags": ["a"]}),
    ("POST", "/api/v1/models/m/versions/1/deprecate", "publish", {}),
    ("POST", "/api/v1/models/m/versions/1/variants", "publish", {}),
    ("POST", "/api/v1/enrollment-tokens", "enroll", {"group": ""}),
    ("POST", "/api/v1/enroll", "device", {"token": "x", "csr": "x"}),
    ("POST", "/api/v1/devices/d/certificate", "device", {"csr": "x", "certificate": "x"}),
    ("GET", "/api/v1/devices", "read", None),
    ("GET", "/api/v1/devices/d", "read", None),
    ("GET", "/api/v1/devices/d/telemetry", "read", None),
    ("GET", "/api/v1/devices/d/drift", "read", None),
    ("POST", "/api/v1/devices/d/revoke", "revoke", None),
    (
        "POST",
        "/api/v1/deployments",
        "deploy",
        {"model": "m", "version": 1, "target": {"devices": ["d"]}},
    ),
    ("GET", "/api/v1/deployments/x", "read", None),
    ("GET", "/api/v1/alerts", "read", None),
    ("GET", "/api/v1/drift/heatmap", "read", None),
    ("POST", "/api/v1/tokens", "admin", {"name": "t", "role": "viewer"}),
    ("GET", "/api/v1/tokens", "admin", None),
    ("DELETE", "/api/v1/tokens/999", "admin", None),
    ("POST", "/api/v1/tokens/999/rotate", "admin", None),
    ("GET", "/api/v1/audit", "admin", None),
]
ALLOWED = {
    "read": set(ROLES),
    "publish": {"publisher", "admin"},
    "deploy": {"operator", "admin"},
    "enroll": {"operator", "admin"},
    "revoke": {"operator", "admin"},
    "admin": {"admin"},
}


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RunningServer, dict[str, str]]]:
    with running_server(tmp_path_factory.mktemp("server")) as f:
        db = Database(Settings.load(f.data_dir).database_url)
        tokens: dict[str, str] = {}
        with db.begin() as s:
            for role in ROLES:
                tokens[role] = create_token(s, role, role)[1]
            tokens["expired"] = create_token(s, "old", "admin", ttl=timedelta(seconds=-1))[1]
            revoked_row, tokens["revoked"] = create_token(s, "gone", "admin")
            from fleet_server.tables import utcnow

            revoked_row.revoked_at = utcnow()
        db.engine.dispose()
        yield f, tokens


def test_table_covers_every_api_route(fleet: tuple[RunningServer, dict[str, str]]) -> None:
    app = fleet[0].server.app
    routes = {
        (m, r.path)
        for r in app.routes
        if isinstance(r, APIRoute) and r.path.startswith("/api/")
        for m in r.methods
    }
    listed = {(m, _template(p, routes)) for m, p, _, _ in ENDPOINTS}
    missing = sorted(routes - listed)
    assert not missing, f"endpoints missing from the role matrix: {missing}"


def _template(path: str, routes: set[tuple[str, str]]) -> str:
    parts = path.split("/")
    for _, template in routes:
        t = template.split("/")
        same = all(a == b or b.startswith("{") for a, b in zip(parts, t, strict=False))
        if len(t) == len(parts) and same:
            return template
    return path


def _call(url: str, method: str, path: str, body: object, token: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    kwargs: dict[str, object] = {"headers": headers, "timeout": 30}
    if method == "POST" and path.endswith("/versions"):
        kwargs["files"] = {"file": ("m.onnx", b"not a model")}
    elif body is not None:
        kwargs["json"] = body
    return httpx.request(method, url + path, **kwargs).status_code  # type: ignore[arg-type]


@pytest.mark.parametrize(("method", "path", "permission", "body"), ENDPOINTS)
def test_endpoint_enforces_its_role(
    fleet: tuple[RunningServer, dict[str, str]],
    method: str,
    path: str,
    permission: str,
    body: object,
) -> None:
    server, tokens = fleet
    if permission == "device":
        # No bearer token is needed or used; garbage gets a 4xx that is not 401/403-by-role.
        assert _call(server.url, method, path, body, None) in (403, 404, 422)
        return
    for bad in (None, "eft_malformed", tokens["expired"], tokens["revoked"]):
        assert _call(server.url, method, path, body, bad) == 401, (method, path, bad)
    for role in ROLES:
        status = _call(server.url, method, path, body, tokens[role])
        if role in ALLOWED[permission]:
            assert status not in (401, 403), (method, path, role, status)
        else:
            assert status == 403, (method, path, role, status)
