"""The server's TUF repository on its own (an in-memory publisher double)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from edge_agent import protocol
from fleet_server.tuf_repo import Expiry, RepositoryStateError, TufRepository, chunk_manifest


class Retained:
    def __init__(self) -> None:
        self.topics: dict[str, bytes] = {}

    def publish(self, topic: str, payload: bytes, *, retain: bool = True) -> None:
        if payload:
            self.topics[topic] = payload
        else:
            self.topics.pop(topic, None)

    def unpublish(self, topic: str) -> None:
        self.topics.pop(topic, None)


def make(tmp_path: Path, **kw: object) -> tuple[TufRepository, Retained]:
    pub = Retained()
    repo = TufRepository.create(
        tmp_path / "repo",
        offline_root_key_path=tmp_path / "offline" / "root.pem",
        bin_bits=2,
        publisher=pub,
        **kw,  # type: ignore[arg-type]
    )
    return repo, pub


def test_old_versions_are_unpublished_one_change_later_and_shared_chunks_stay(
    tmp_path: Path,
) -> None:
    repo, pub = make(tmp_path)
    data = b"a" * (protocol.CHUNK_SIZE + 10)
    repo.add_targets({"models/a/1/model.onnx": data, "models/b/1/model.onnx": data})
    first_snapshot = f"{protocol.TUF_METADATA_PREFIX}{repo.targets_version}.snapshot.json"
    repo.remove_targets(["models/a/1/model.onnx"])
    assert first_snapshot in pub.topics  # an agent mid-cycle may still read it
    repo.add_targets({"models/c/1/model.onnx": b"c"})
    assert first_snapshot not in pub.topics
    manifest, _ = chunk_manifest(data)
    for ref in manifest.chunks:  # still used by models/b
        assert protocol.chunk_topic(ref.sha256) in pub.topics
    repo.remove_targets(["models/b/1/model.onnx"])
    repo.add_targets({"models/d/1/model.onnx": b"d"})
    for ref in manifest.chunks:
        assert protocol.chunk_topic(ref.sha256) not in pub.topics


def test_refresh_resigns_only_what_expires(tmp_path: Path) -> None:
    now = [datetime.now(timezone.utc)]
    repo, _ = make(tmp_path, clock=lambda: now[0])
    assert repo.refresh_expiring(timedelta(hours=1)) == []
    now[0] += timedelta(hours=23, minutes=30)
    assert repo.refresh_expiring(timedelta(hours=1)) == ["timestamp"]
    now[0] += timedelta(days=7)
    assert repo.refresh_expiring(timedelta(hours=1)) == ["snapshot", "timestamp"]


def test_load_keeps_versions_and_expiry(tmp_path: Path) -> None:
    repo, pub = make(tmp_path, expiry=Expiry(timestamp=timedelta(hours=2)))
    repo.add_targets({"assignments/d.json": b"{}"})
    again = TufRepository.load(tmp_path / "repo", pub)
    assert again.targets_version == repo.targets_version
    assert again.expiry.timestamp == timedelta(hours=2)
    assert again.target_info("assignments/d.json") is not None


def test_root_key_with_passphrase_is_needed_to_rotate_online_keys(tmp_path: Path) -> None:
    repo, _ = make(tmp_path, passphrase=b"pw")
    assert b"ENCRYPTED" in (tmp_path / "offline" / "root.pem").read_bytes()
    with pytest.raises(RepositoryStateError):
        repo.rotate_online_key("snapshot", root_passphrase=b"wrong")
    repo.rotate_online_key("snapshot", root_passphrase=b"pw")
    assert repo.root_version == 2
    assert not (tmp_path / "repo" / "root-key.pem").exists()  # the root key lives apart
