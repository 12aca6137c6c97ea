"""A broker (or anyone who can write retained topics) attacks the agent; TUF refuses."""

from __future__ import annotations

import hashlib
import os
from datetime import datetime, timedelta, timezone

import pytest
from securesystemslib.signer._crypto_signer import CryptoSigner
from tuf.api._payload import Snapshot, Timestamp
from tuf.api.metadata import Metadata
from tuf.api.serialization.json import JSONSerializer

from edge_agent import protocol
from edge_agent.exceptions import TrustError, UpdateError
from fleet_server.tuf_repo import TufRepository, _load_signer
from tests.trust.conftest import DEVICE, Env

COMPACT = JSONSerializer(compact=True)


def refused(env: Env, action: str = "assignment") -> str:
    cycle = env.cycle()
    with pytest.raises(UpdateError) as e:
        if action == "assignment":
            cycle.assignment(DEVICE)
        else:
            cycle.refresh()
    return e.value.reason


def synced(env: Env) -> None:
    cycle = env.cycle()
    cycle.refresh()
    cycle.assignment(DEVICE)


def md_bytes(env: Env, name: str) -> bytes:
    return (env.repo.metadata_dir / name).read_bytes()


def current(env: Env, role: str) -> str:
    ts = Metadata[Timestamp].from_bytes(md_bytes(env, "timestamp.json"))
    if role == "timestamp":
        return "timestamp.json"
    snap_v = ts.signed.snapshot_meta.version
    if role == "snapshot":
        return f"{snap_v}.snapshot.json"
    snap = Metadata[Snapshot].from_bytes(md_bytes(env, f"{snap_v}.snapshot.json"))
    return f"{snap.signed.meta[role + '.json'].version}.{role}.json"


def chunk_pieces(data: bytes) -> list[bytes]:
    return [data[i : i + protocol.CHUNK_SIZE] for i in range(0, len(data), protocol.CHUNK_SIZE)]


def manifest_topic(pkg: protocol.ModelPackage) -> str:
    dirname, _, base = pkg.model_target.rpartition("/")
    return protocol.TUF_TARGETS_PREFIX + f"{dirname}/{pkg.model_sha256}.{base}"


def publish_manifest(env: Env, pkg: protocol.ModelPackage, pieces: list[bytes]) -> None:
    refs = []
    for p in pieces:
        sha = hashlib.sha256(p).hexdigest()
        env.pub.publish(protocol.chunk_topic(sha), p)
        refs.append(protocol.ChunkRef(sha, len(p)))
    manifest = protocol.ChunkManifest(sum(len(p) for p in pieces), tuple(refs))
    env.pub.publish(manifest_topic(pkg), manifest.to_bytes())


# -- content ---------------------------------------------------------------------------------
def test_flipped_bit_in_a_chunk_is_refused(env: Env) -> None:
    data = os.urandom(3 * protocol.CHUNK_SIZE)
    pkg = env.publish_model("m", 1, data)
    piece = chunk_pieces(data)[1]
    evil = bytes([piece[0] ^ 1]) + piece[1:]
    env.pub.publish(protocol.chunk_topic(hashlib.sha256(piece).hexdigest()), evil)
    with pytest.raises(TrustError) as e:
        env.cycle().model_file(pkg)
    assert e.value.reason == "hash_mismatch"
    assert not list((env.agent_dir / "tuf" / "targets").glob(f"{pkg.model_sha256}*"))


def test_extra_data_appended_through_the_manifest_is_refused(env: Env) -> None:
    data = os.urandom(2 * protocol.CHUNK_SIZE)
    pkg = env.publish_model("m", 1, data)
    publish_manifest(env, pkg, [*chunk_pieces(data), os.urandom(1000)])
    with pytest.raises(TrustError) as e:
        env.cycle().model_file(pkg)
    assert e.value.reason == "hash_mismatch"  # DownloadLengthMismatchError from ngclient


def test_wrong_length_target_is_refused(env: Env) -> None:
    data = os.urandom(2 * protocol.CHUNK_SIZE)
    pkg = env.publish_model("m", 1, data)
    publish_manifest(env, pkg, chunk_pieces(data)[:1])  # truncated
    with pytest.raises(TrustError) as e:
        env.cycle().model_file(pkg)
    assert e.value.reason == "hash_mismatch"


def test_substituted_content_of_the_same_length_is_refused(env: Env) -> None:
    data = os.urandom(2 * protocol.CHUNK_SIZE)
    pkg = env.publish_model("m", 1, data)
    publish_manifest(env, pkg, chunk_pieces(os.urandom(len(data))))
    with pytest.raises(TrustError) as e:
        env.cycle().model_file(pkg)
    assert e.value.reason == "hash_mismatch"


def test_oversized_chunk_in_a_manifest_is_refused_before_reading_it(env: Env) -> None:
    pkg = env.publish_model("m", 1, b"x" * 100)
    fake = protocol.ChunkManifest(
        protocol.CHUNK_SIZE * 10, (protocol.ChunkRef("a" * 64, protocol.CHUNK_SIZE * 10),)
    )
    env.pub.publish(manifest_topic(pkg), fake.to_bytes())
    cycle = env.cycle()
    with pytest.raises(TrustError) as e:
        cycle.model_file(pkg)
    assert e.value.reason == "hash_mismatch"
    assert env.fetchers[-1].chunk_topics_read == 0


# -- rollback, freeze, mix-and-match ---------------------------------------------------------
def test_timestamp_rollback_is_refused(env: Env) -> None:
    env.publish_model("m", 1, b"one")
    synced(env)
    old = md_bytes(env, "timestamp.json")
    env.publish_model("m", 2, b"two")
    synced(env)
    env.pub.publish(env.md_topic("timestamp.json"), old)
    assert refused(env) == "untrusted_metadata"


def test_targets_rollback_is_refused(env: Env) -> None:
    env.publish_model("m", 1, b"one")
    synced(env)
    old = md_bytes(env, current(env, "targets"))
    env.publish_model("m", 2, b"two")
    env.pub.publish(env.md_topic(current(env, "targets")), old)
    # The snapshot signs each file's length too: that check may fire before the version's.
    assert refused(env) in ("untrusted_metadata", "hash_mismatch")


def test_mix_and_match_snapshot_of_another_version_is_refused(env: Env) -> None:
    env.publish_model("m", 1, b"one")
    synced(env)
    other = md_bytes(env, current(env, "snapshot"))
    env.publish_model("m", 2, b"two")
    env.pub.publish(env.md_topic(current(env, "snapshot")), other)
    assert refused(env) in ("untrusted_metadata", "hash_mismatch")


def test_freeze_with_an_expired_timestamp_is_refused(env: Env) -> None:
    synced(env)
    past = datetime.now(timezone.utc) - timedelta(days=2)
    frozen = TufRepository.load(env.repo.root_dir, env.pub, clock=lambda: past)
    frozen.add_targets({"models/m/1/model.onnx": b"x"})  # validly signed, expired a day ago
    assert refused(env) == "expired_metadata"


def test_replayed_assignment_serial_is_a_no_op_signal(env: Env) -> None:
    env.assign(3)
    first = env.cycle()
    a = first.assignment(DEVICE)
    assert a is not None and not first.replayed
    env.repo.add_targets({"models/m/1/model.onnx": b"x"})  # a new repository version
    env.assign(3)  # the same assignment again
    again = env.cycle()
    assert again.assignment(DEVICE) == a and again.replayed


def test_older_assignment_serial_is_refused(env: Env) -> None:
    env.assign(5)
    synced(env)
    env.assign(4)  # signed, but older than what the device has seen
    assert refused(env) == "untrusted_metadata"
    assert env.client().highest_serial == 5


def test_assignment_for_another_device_under_our_path_is_refused(env: Env) -> None:
    a = protocol.Assignment("someone-else", 9, ())
    env.repo.add_targets({protocol.assignment_target_path(DEVICE): a.to_bytes()})
    assert refused(env) == "untrusted_metadata"


# -- signatures and keys ---------------------------------------------------------------------
def test_timestamp_signed_by_a_wrong_key_is_refused(env: Env) -> None:
    synced(env)
    md = Metadata.from_bytes(md_bytes(env, "timestamp.json"))
    md.signed.version += 1
    md.sign(CryptoSigner.generate_ed25519())
    env.pub.publish(env.md_topic("timestamp.json"), md.to_bytes(COMPACT))
    assert refused(env, "refresh") == "untrusted_metadata"


def test_unsigned_timestamp_is_refused(env: Env) -> None:
    synced(env)
    md = Metadata.from_bytes(md_bytes(env, "timestamp.json"))
    md.signed.version += 1
    md.signatures.clear()
    env.pub.publish(env.md_topic("timestamp.json"), md.to_bytes(COMPACT))
    assert refused(env, "refresh") == "untrusted_metadata"


def test_timestamp_below_a_threshold_of_two_is_refused(env: Env) -> None:
    root_signer = _load_signer(env.repo.root_key_path)
    ts_signer = _load_signer(env.repo.root_dir / "keys" / "timestamp.pem")
    second = CryptoSigner.generate_ed25519()
    root = Metadata.from_bytes(env.repo.root_bytes())
    root.signed.add_key(second.public_key, "timestamp")
    root.signed.roles["timestamp"].threshold = 2
    root.signed.version += 1
    root.sign(root_signer)
    env.pub.publish(env.md_topic(f"{root.signed.version}.root.json"), root.to_bytes(COMPACT))
    ts = Metadata.from_bytes(md_bytes(env, "timestamp.json"))
    ts.signed.version += 1
    ts.sign(ts_signer)  # one of the two required signatures
    env.pub.publish(env.md_topic("timestamp.json"), ts.to_bytes(COMPACT))
    assert refused(env, "refresh") == "untrusted_metadata"
    ts.sign(second, append=True)  # both: accepted
    env.pub.publish(env.md_topic("timestamp.json"), ts.to_bytes(COMPACT))
    env.cycle().refresh()


@pytest.mark.parametrize("role", ["timestamp", "snapshot", "targets", "bins"])
def test_online_key_rotation_is_followed_without_reinstall(env: Env, role: str) -> None:
    env.assign(1)
    synced(env)
    old_key = _load_signer(env.repo.root_dir / "keys" / f"{role}.pem")
    env.repo.rotate_online_key(role)
    env.assign(2)
    cycle = env.cycle()
    a = cycle.assignment(DEVICE)
    assert a is not None and a.serial == 2
    if role == "timestamp":  # the revoked key signs no more
        md = Metadata.from_bytes(md_bytes(env, "timestamp.json"))
        md.signed.version += 1
        md.sign(old_key)
        env.pub.publish(env.md_topic("timestamp.json"), md.to_bytes(COMPACT))
        assert refused(env, "refresh") == "untrusted_metadata"


def test_root_rotation_is_accepted_when_signed_by_old_and_new_keys(env: Env) -> None:
    synced(env)
    env.repo.rotate_root(env.tmp / "offline" / "root2.pem", new_passphrase=b"secret")
    env.assign(1)
    assert env.cycle().assignment(DEVICE) is not None
    trusted = Metadata.from_bytes((env.agent_dir / "tuf/metadata/root.json").read_bytes())
    assert trusted.signed.version == 2


@pytest.mark.parametrize("keep", ["new", "old"])
def test_root_rotation_signed_by_one_side_only_is_refused(env: Env, keep: str) -> None:
    synced(env)
    old_id = _load_signer(env.repo.root_key_path).public_key.keyid
    env.repo.rotate_root(env.tmp / "offline" / "root2.pem")
    good = md_bytes(env, "2.root.json")
    md = Metadata.from_bytes(good)
    for keyid in list(md.signatures):
        if (keyid == old_id) == (keep == "new"):
            del md.signatures[keyid]
    assert len(md.signatures) == 1
    env.pub.publish(env.md_topic("2.root.json"), md.to_bytes(COMPACT))
    assert refused(env, "refresh") == "untrusted_metadata"
    env.pub.publish(env.md_topic("2.root.json"), good)
    env.cycle().refresh()  # the real rotation still goes through
