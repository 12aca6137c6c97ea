"""Attacks on delivery, through the real agent process, a real fleet server and Mosquitto.

In every case the agent keeps serving the model it had, and the refusal reaches the server
with a reason code: on the deployment (``GET /api/v1/deployments/{id}``) when the agent got
as far as its signed assignment, as a ``device_refusal`` alert and an ``alert`` telemetry
record when the metadata itself was refused.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Any

from edge_agent import protocol
from fleet_server.tuf_repo import chunk_manifest, content_url
from tests.trust_e2e.conftest import DEVICE, MODEL, Fleet, wait_for


def _status_is(fleet: Fleet, dep: str, *statuses: str) -> Any:
    row = fleet.device_status(dep)
    return row if row["status"] in statuses else None


def _alert_seq(fleet: Fleet) -> int:
    recs = fleet.client.telemetry(DEVICE, kind="alert")
    return max((r["seq"] for r in recs), default=0)


def _refusals_since(fleet: Fleet, seq: int) -> list[dict[str, Any]]:
    recs = fleet.client.telemetry(DEVICE, kind="alert")
    return sorted((r for r in recs if r["seq"] > seq), key=lambda r: r["seq"])


def _target_bytes(fleet: Fleet, path: str) -> tuple[Any, bytes]:
    repo = fleet.services.tuf
    info = repo.target_info(path)
    assert info is not None
    return info, (repo.targets_dir / content_url(path, info.hashes["sha256"])).read_bytes()


def _device_shows(fleet: Fleet, reason: str) -> None:
    """The refusal is visible on the device as ``last_refusal``."""
    alert = wait_for(
        lambda: (a := fleet.last_refusal()) and a["detail"].get("reason") == reason and a,
        what=f"a device_refusal alert with {reason}",
    )
    assert alert["device_id"] == DEVICE
    device = fleet.client.device(DEVICE)
    assert device["last_refusal"]["reason"] == reason


def test_tampered_chunk_on_broker_fails_with_hash_mismatch_and_keeps_serving(
    fleet: Fleet,
) -> None:
    before = fleet.serving()
    version = fleet.publish_new()
    _, data = _target_bytes(fleet, protocol.model_target_path(MODEL, version))
    manifest, pieces = chunk_manifest(data)
    topic = protocol.chunk_topic(manifest.chunks[-1].sha256)
    flipped = bytearray(pieces[-1])
    flipped[len(flipped) // 2] ^= 0x01  # one bit
    fleet.attacker.publish(topic, bytes(flipped))
    try:
        dep = fleet.deploy(version)
        row = wait_for(lambda: _status_is(fleet, dep, "failed"), what="deployment failed")
        assert row["reason"] == "hash_mismatch", row
        assert fleet.serving() == before
        device = fleet.client.device(DEVICE)
        assert device["last_refusal"]["reason"] == "hash_mismatch"
    finally:
        fleet.attacker.publish(topic, pieces[-1])


def test_frozen_repository_is_refused_as_expired_and_agent_follows_the_refresh(
    fleet: Fleet,
) -> None:
    before = fleet.serving()
    version = fleet.publish_new()
    repo = fleet.services.tuf
    seq = _alert_seq(fleet)
    real_clock = repo._clock
    # The server's clock two days back: everything it signs now has a timestamp that
    # expired a day ago, as if the server had stopped refreshing (a freeze).
    repo._clock = lambda: datetime.now(timezone.utc) - timedelta(days=2)
    try:
        dep = fleet.deploy(version)
        refusals = wait_for(lambda: _refusals_since(fleet, seq), what="a refusal report")
        assert refusals[-1]["body"]["reason"] == "expired_metadata", refusals
        assert fleet.device_status(dep)["status"] == "pending"
        assert fleet.serving() == before
        _device_shows(fleet, "expired_metadata")
    finally:
        repo._clock = real_clock
    # What services._refresh_loop does: re-sign what expires soon; the agent follows.
    with fleet.services.publish_lock:
        assert "timestamp" in repo.refresh_expiring(within=timedelta(hours=12))
    fleet.services.notify([DEVICE])
    wait_for(lambda: _status_is(fleet, dep, "active"), what="deployment active after refresh")
    assert fleet.serving() == version


def test_model_needing_newer_onnxruntime_is_refused_before_download(fleet: Fleet) -> None:
    before = fleet.serving()
    version = fleet.publish_new()
    path = protocol.model_target_path(MODEL, version)
    info, data = _target_bytes(fleet, path)
    custom = {**(info.custom or {}), "ort_min": "99.0"}
    with fleet.services.publish_lock:  # the server signs a model this device cannot run
        fleet.services.tuf.add_targets({path: data}, custom={path: custom})
    dep = fleet.deploy(version)
    row = wait_for(lambda: _status_is(fleet, dep, "failed"), what="deployment failed")
    assert row["reason"] == "incompatible", row
    assert "99.0" in row["message"]
    # Refused before download: no byte of the model reached the device's disk.
    tuf_dir = fleet.agent.data_dir / "tuf"
    sha = info.hashes["sha256"]
    assert not [p for p in (tuf_dir / "targets").iterdir() if p.name.startswith(sha)]
    chunks = {c.sha256 for c in chunk_manifest(data)[0].chunks}
    partial = tuf_dir / "partial"
    assert not (partial.is_dir() and chunks & {p.name for p in partial.iterdir()})
    assert fleet.serving() == before


def test_replayed_current_assignment_is_not_reinstalled(fleet: Fleet) -> None:
    version = fleet.publish_new()
    dep = fleet.deploy(version)
    wait_for(lambda: _status_is(fleet, dep, "active"), what="deployment active")
    reports = len(fleet.client.telemetry(DEVICE, kind="deployment"))
    apath = protocol.assignment_target_path(DEVICE)
    info, assignment = _target_bytes(fleet, apath)
    manifest, _ = chunk_manifest(assignment)
    repo = fleet.services.tuf
    timestamp = (repo.metadata_dir / "timestamp.json").read_bytes()
    probe = protocol.device_topic(DEVICE, "probe")
    fleet.attacker.spy(probe)  # every agent cycle sends a barrier token here
    mark = fleet.log_mark()
    for _ in range(2):
        cycles = fleet.attacker.count(probe)
        # The current signed assignment and timestamp, replayed verbatim, and a hint.
        url = content_url(apath, info.hashes["sha256"])
        fleet.attacker.publish(protocol.TUF_TARGETS_PREFIX + url, manifest.to_bytes())
        fleet.attacker.publish(protocol.chunk_topic(manifest.chunks[0].sha256), assignment)
        fleet.attacker.publish(protocol.TUF_METADATA_PREFIX + "timestamp.json", timestamp)
        fleet.attacker.nudge()
        wait_for(lambda: fleet.attacker.count(probe) > cycles, what="an update cycle")  # noqa: B023
    time.sleep(1.5)  # let the last cycle finish
    assert len(fleet.client.telemetry(DEVICE, kind="deployment")) == reports
    assert "fetching --" not in fleet.log_since(mark)
    assert fleet.serving() == version


def test_rolled_back_timestamp_is_refused_and_agent_keeps_serving(fleet: Fleet) -> None:
    repo = fleet.services.tuf
    old_timestamp = (repo.metadata_dir / "timestamp.json").read_bytes()
    version = fleet.publish_new()
    dep = fleet.deploy(version)
    wait_for(lambda: _status_is(fleet, dep, "active"), what="deployment active")
    seq = _alert_seq(fleet)
    fleet.attacker.publish(protocol.TUF_METADATA_PREFIX + "timestamp.json", old_timestamp)
    try:
        fleet.attacker.nudge()
        refusals = wait_for(lambda: _refusals_since(fleet, seq), what="a refusal report")
        body = refusals[-1]["body"]
        assert body["reason"] == "untrusted_metadata", body
        assert "BadVersionNumber" in body["message"]
        assert fleet.serving() == version
    finally:
        with fleet.services.publish_lock:
            repo.republish_all()
