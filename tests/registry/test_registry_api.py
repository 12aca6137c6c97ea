"""The registry through its REST API on a real server: immutable versions, lineage,
latency, stages, tags, search, deprecation, optimized variants, audit, roles."""

from __future__ import annotations

import time

import numpy as np
import pytest

from fleet_server.registry import measure_latency
from tests.registry.conftest import Fleet


def _published(fleet: Fleet, name: str, **form: str) -> dict[str, object]:
    r = fleet.publish(name, **form)
    assert r.status_code == 201, r.text
    body: dict[str, object] = r.json()
    return body


def test_republishing_the_same_file_makes_a_new_version_and_never_overwrites(
    fleet: Fleet,
) -> None:
    first = _published(fleet, "immutable")
    second = _published(fleet, "immutable")
    assert (first["version"], second["version"]) == (1, 2)
    again = fleet.call("GET", "/immutable/versions/1").json()
    for key in ("sha256", "created_at", "lineage", "parity", "latency", "size"):
        assert again[key] == first[key], key
    # Version 1's signed model is still where it was, under its own hash.
    stored = fleet.running.data_dir / "tuf" / "targets" / "models" / "immutable" / "1"
    assert (stored / f"{first['sha256']}.model.onnx").exists()
    assert [v["version"] for v in fleet.call("GET", "/immutable/versions").json()] == [1, 2]


def test_publish_records_lineage_opsets_size_parity_and_latency(fleet: Fleet) -> None:
    v = _published(fleet, "lineage")
    lineage = v["lineage"]
    assert isinstance(lineage, dict)
    assert lineage["published_by"] == "admin" and lineage["published_at"]
    assert lineage["framework"]["name"] == "scikit-learn"
    assert lineage["framework"]["estimator"] == "Pipeline"
    assert {"skl2onnx", "onnx", "onnxruntime", "scikit-learn"} <= set(lineage["converters"])
    assert len(lineage["sample_sha256"]) == 64
    assert v["opsets"] == {"": v["opset"], "ai.onnx.ml": 1}
    assert isinstance(v["size"], int) and v["size"] > 0
    assert v["parity"]["passed"] is True and v["parity"]["source"] == "sample"  # type: ignore[index]
    lat = v["latency"]
    assert isinstance(lat, dict)
    assert 0 < lat["single_row_p50_us"] <= lat["single_row_p90_us"]
    assert lat["batch_rows"] == 1000 and lat["batch_rows_per_s"] > 1000
    assert lat["threads"] == 1
    assert (v["stage"], v["variant"], v["base_version"], v["tags"]) == ("none", "base", None, [])


def test_latency_measurement_stays_under_a_second_even_for_a_slow_model() -> None:
    from sklearn.ensemble import RandomForestClassifier

    from converters import convert_estimator

    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 20)).astype(np.float32)
    forest = RandomForestClassifier(n_estimators=200, max_depth=12, random_state=0)
    conv = convert_estimator(forest.fit(x, x[:, 0] > 0), x[:50])
    t0 = time.perf_counter()
    lat = measure_latency(conv.onnx_bytes, {"input": x[:16]})
    assert time.perf_counter() - t0 < 1.0
    assert lat["batch_runs"] >= 1 and lat["single_row_runs"] >= 5


def test_promoting_to_production_archives_the_previous_production_version(
    fleet: Fleet,
) -> None:
    for _ in range(2):
        _published(fleet, "staged")
    assert (
        fleet.call("PUT", "/staged/versions/1/stage", json={"stage": "staging"}).json()["stage"]
        == "staging"
    )
    assert (
        fleet.call("PUT", "/staged/versions/1/stage", json={"stage": "production"}).status_code
        == 200
    )
    r = fleet.call("PUT", "/staged/versions/2/stage", json={"stage": "production"})
    assert r.status_code == 200 and r.json()["stage"] == "production"
    assert fleet.call("GET", "/staged/versions/1").json()["stage"] == "archived"
    prod = fleet.call("GET", "/staged/versions", params={"stage": "production"}).json()
    assert [v["version"] for v in prod] == [2]
    record = fleet.audit("model.stage")[-1]
    assert record.target == "staged:2"
    assert record.detail == {"before": "none", "after": "production", "archived": [1]}


def test_unknown_stage_and_server_owned_fields_are_refused(fleet: Fleet) -> None:
    _published(fleet, "strict")
    assert fleet.call("PUT", "/strict/versions/1/stage", json={"stage": "live"}).status_code == 422
    r = fleet.call("PUT", "/strict/versions/1/stage", json={"stage": "staging", "sha256": "0" * 64})
    assert r.status_code == 422  # mass assignment: no way to rewrite a version's content
    bad_tag = fleet.call("PUT", "/strict/versions/1/tags", json={"tags": ["Has Space"]})
    assert bad_tag.status_code == 422
    assert (
        fleet.call("PUT", "/strict/versions/9/stage", json={"stage": "staging"}).status_code == 404
    )
    assert fleet.call("GET", "/strict/versions/1").json()["stage"] == "none"


def test_tags_replace_add_remove_and_search_by_tag(fleet: Fleet) -> None:
    for _ in range(2):
        _published(fleet, "tagged")
    r = fleet.call("PUT", "/tagged/versions/1/tags", json={"tags": ["q3", "champion", "q3"]})
    assert r.json()["tags"] == ["champion", "q3"]
    r = fleet.call("POST", "/tagged/versions/2/tags", json={"add": ["challenger", "q3"]})
    assert r.json()["tags"] == ["challenger", "q3"]
    r = fleet.call("POST", "/tagged/versions/1/tags", json={"remove": ["champion"]})
    assert r.json()["tags"] == ["q3"]

    versions = fleet.call("GET", "/tagged/versions", params={"tag": "challenger"}).json()
    assert [v["version"] for v in versions] == [2]
    listing = {m["name"]: m for m in fleet.call("GET", "", params={"tag": "q3"}).json()}
    assert listing["tagged"]["matching_versions"] == [1, 2]
    assert listing["tagged"]["tags"] == ["challenger", "q3"]
    assert "immutable" not in listing  # only names with a matching version
    # A tag that is a substring of another tag does not match it.
    assert fleet.call("GET", "/tagged/versions", params={"tag": "q"}).json() == []
    records = [r for r in fleet.audit("model.tags") if r.target == "tagged:1"]
    assert [r.detail["after"] for r in records] == [["champion", "q3"], ["q3"]]


def test_listing_filters_by_stage_and_name_prefix(fleet: Fleet) -> None:
    _published(fleet, "fraud_a")
    _published(fleet, "fraudxa")
    _published(fleet, "churn")
    fleet.call("PUT", "/fraud_a/versions/1/stage", json={"stage": "staging"})
    names = [m["name"] for m in fleet.call("GET", "", params={"prefix": "fraud"}).json()]
    assert names == ["fraud_a", "fraudxa"]
    # "_" is literal in a prefix, not a LIKE wildcard.
    assert [m["name"] for m in fleet.call("GET", "", params={"prefix": "fraud_"}).json()] == [
        "fraud_a"
    ]
    staging = fleet.call("GET", "", params={"stage": "staging", "prefix": "fr"}).json()
    assert [(m["name"], m["matching_versions"], m["staging_versions"]) for m in staging] == [
        ("fraud_a", [1], [1])
    ]


def test_deprecated_version_cannot_be_deployed_or_promoted(fleet: Fleet) -> None:
    _published(fleet, "old")
    fleet.call("PUT", "/old/versions/1/stage", json={"stage": "production"})
    r = fleet.call("POST", "/old/versions/1/deprecate", json={"reason": "leaks a feature"})
    assert r.status_code == 200
    body = r.json()
    assert body["deprecated"] is True and body["deprecated_reason"] == "leaks a feature"
    assert body["stage"] == "archived" and body["deprecated_at"]
    dep = fleet.running.client._http.post(
        "/api/v1/deployments",
        json={"model": "old", "version": 1, "target": {"devices": ["dev-x"]}},
    )
    assert dep.status_code == 422 and "deprecated" in dep.json()["detail"]
    r = fleet.call("PUT", "/old/versions/1/stage", json={"stage": "production"})
    assert r.status_code == 409
    assert fleet.call("POST", "/old/versions/1/variants", json={}).status_code == 409
    listing = fleet.call("GET", "", params={"deprecated": "true", "prefix": "old"}).json()
    assert listing[0]["deprecated_versions"] == [1]


def test_deprecating_twice_changes_nothing_and_is_audited_once(fleet: Fleet) -> None:
    _published(fleet, "twice")
    first = fleet.call("POST", "/twice/versions/1/deprecate", json={"reason": "first"}).json()
    second = fleet.call("POST", "/twice/versions/1/deprecate", json={"reason": "second"}).json()
    assert second["deprecated_reason"] == "first"
    assert second["deprecated_at"] == first["deprecated_at"]
    assert [
        r.detail["reason"] for r in fleet.audit("model.deprecate") if r.target == "twice:1"
    ] == ["first"]


def test_optimized_variant_from_the_upload_is_its_own_version_pointing_at_its_base(
    fleet: Fleet,
) -> None:
    base = _published(fleet, "fast", variant="optimized")
    assert base["version"] == 1 and base["variants"] == [2]
    variant = fleet.call("GET", "/fast/versions/2").json()
    assert variant["variant"] in ("optimized", "quantized")
    assert variant["base_version"] == 1
    assert variant["lineage"]["base"] == {"name": "fast", "version": 1, "sha256": base["sha256"]}
    assert variant["lineage"]["variant"]["size_ratio"] > 0
    assert variant["parity"]["passed"] is True and variant["parity"]["rows"] > 0
    assert variant["latency"]["single_row_p50_us"] > 0
    assert variant["stage"] == "none"  # the admin chooses which version to deploy
    actions = [(r.action, r.target) for r in fleet.audit() if r.target.startswith("fast:")]
    assert actions == [("model.publish", "fast:1"), ("model.publish_variant", "fast:2")]


def test_variant_endpoint_builds_from_the_stored_version(fleet: Fleet) -> None:
    _published(fleet, "later")
    r = fleet.call("POST", "/later/versions/1/variants", json={"quantize": False})
    assert r.status_code == 201, r.text
    v = r.json()
    assert (v["version"], v["variant"], v["base_version"]) == (2, "optimized", 1)
    assert fleet.call("GET", "/later/versions/1").json()["variants"] == [2]
    # A variant of a variant would hide its real lineage.
    assert fleet.call("POST", "/later/versions/2/variants", json={}).status_code == 422
    record = fleet.audit("model.publish_variant")[-1]
    assert record.target == "later:2" and record.detail["base_version"] == 1


def test_damaged_model_file_on_disk_never_becomes_a_variants_base(fleet: Fleet) -> None:
    v = _published(fleet, "damaged")
    targets = fleet.running.data_dir / "tuf" / "targets" / "models" / "damaged" / "1"
    path = targets / f"{v['sha256']}.model.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    r = fleet.call("POST", "/damaged/versions/1/variants", json={})
    assert r.status_code == 500 and "signed hash" in r.json()["detail"]
    assert [x["version"] for x in fleet.call("GET", "/damaged/versions").json()] == [1]


@pytest.mark.parametrize("role", ["viewer", "operator"])
def test_readers_and_operators_cannot_change_the_registry(fleet: Fleet, role: str) -> None:
    _published(fleet, f"roles-{role}")
    base = f"/roles-{role}/versions/1"
    refused = [
        fleet.publish(f"roles-{role}", role=role),
        fleet.call("PUT", f"{base}/stage", role, json={"stage": "production"}),
        fleet.call("PUT", f"{base}/tags", role, json={"tags": ["x"]}),
        fleet.call("POST", f"{base}/tags", role, json={"add": ["x"]}),
        fleet.call("POST", f"{base}/deprecate", role, json={}),
        fleet.call("POST", f"{base}/variants", role, json={}),
    ]
    assert [r.status_code for r in refused] == [403] * len(refused)
    v = fleet.call("GET", base, role).json()
    assert (v["stage"], v["tags"], v["deprecated"], v["variants"]) == ("none", [], False, [])
    assert fleet.call("GET", "", role).status_code == 200


def test_publisher_role_may_stage_tag_and_deprecate(fleet: Fleet) -> None:
    r = fleet.publish("by-publisher", role="publisher")
    assert r.status_code == 201 and r.json()["published_by"] == "publisher-user"
    base = "/by-publisher/versions/1"
    for method, path, body in [
        ("PUT", "/stage", {"stage": "staging"}),
        ("POST", "/tags", {"add": ["ok"]}),
        ("POST", "/deprecate", {}),
    ]:
        assert fleet.call(method, base + path, "publisher", json=body).status_code == 200
    actors = {r.actor for r in fleet.audit() if r.target == "by-publisher:1"}
    assert actors == {"publisher-user"}


def test_calls_without_a_token_are_401(fleet: Fleet) -> None:
    import httpx

    assert httpx.get(f"{fleet.url}/api/v1/models").status_code == 401
    r = httpx.put(f"{fleet.url}/api/v1/models/x/versions/1/stage", json={"stage": "none"})
    assert r.status_code == 401
