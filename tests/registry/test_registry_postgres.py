"""The registry's search, stages and variants on PostgreSQL (JSON tags, partial index)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.registry.conftest import make_fleet
from tests.support.fleet import running_server

pytestmark = pytest.mark.postgres


def test_registry_flow_on_postgresql(tmp_path: Path, postgres_url: str) -> None:
    with running_server(tmp_path / "server", db_url=postgres_url) as running:
        fleet = make_fleet(running, tmp_path)
        assert fleet.publish("pg-model", variant="optimized").status_code == 201
        assert fleet.publish("pg-model").status_code == 201
        assert [v["version"] for v in fleet.call("GET", "/pg-model/versions").json()] == [1, 2, 3]
        assert fleet.call("GET", "/pg-model/versions/1").json()["variants"] == [2]

        for v in (1, 3):
            r = fleet.call("PUT", f"/pg-model/versions/{v}/stage", json={"stage": "production"})
            assert r.status_code == 200
        assert fleet.call("GET", "/pg-model/versions/1").json()["stage"] == "archived"

        fleet.call("POST", "/pg-model/versions/3/tags", json={"add": ["gold", "q_3"]})
        fleet.call("POST", "/pg-model/versions/2/tags", json={"add": ["qx3"]})
        found = fleet.call("GET", "/pg-model/versions", params={"tag": "q_3"}).json()
        assert [v["version"] for v in found] == [3]  # "_" is no wildcard for tags either
        listing = fleet.call("GET", "", params={"stage": "production"}).json()
        assert [(m["name"], m["production_version"]) for m in listing] == [("pg-model", 3)]

        fleet.call("POST", "/pg-model/versions/3/deprecate", json={"reason": "pg"})
        assert fleet.call("GET", "", params={"stage": "production"}).json() == []
        actions = sorted({r.action for r in fleet.audit()})
        assert {"model.publish", "model.publish_variant", "model.stage", "model.tags"} <= set(
            actions
        )
        assert "model.deprecate" in actions
