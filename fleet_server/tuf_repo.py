"""The fleet's TUF repository (python-tuf Metadata API), published as retained MQTT messages.

Roles: ``root`` (offline key in its own file, optionally passphrase-encrypted), ``targets``,
``snapshot``, ``timestamp`` (online keys in ``keys/``), and succinct hash-bin delegations
``bins-XX`` (TAP 15, one online key) that hold every ``assignments/`` target, so a device
downloads only its own bin instead of the assignments of the whole fleet. Consistent
snapshots are on: metadata is published as ``<N>.<role>.json`` (``timestamp.json`` and
``<N>.root.json`` for the root chain), targets as ``<dir>/<sha256>.<name>``.

Topics (see ``edge_agent.protocol``)::

    TUF_METADATA_PREFIX + <file>                  metadata bytes
    TUF_TARGETS_PREFIX + <dir>/<sha256>.<name>    ChunkManifest of a target
    chunk_topic(<sha256>)                          one chunk (CHUNK_SIZE), shared by targets

Order of publication: content, then delegated and top-level targets, then snapshot, and the
timestamp last, so an agent that sees a new timestamp finds everything it points at. Topics
that drop out of the live set are unpublished one change later (an agent in the middle of
a cycle still finds them). Everything is also kept on disk under ``root_dir``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)

# The public names are re-exported by ``securesystemslib.signer`` and ``tuf.api.metadata``;
# they are imported from their defining modules so that ``mypy --strict`` sees them.
from securesystemslib.signer._crypto_signer import CryptoSigner
from securesystemslib.signer._key import SSlibKey
from tuf.api._payload import (
    Delegations,
    MetaFile,
    Root,
    Snapshot,
    SuccinctRoles,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.metadata import Metadata
from tuf.api.serialization.json import JSONSerializer

from edge_agent import protocol
from edge_agent.fsutil import atomic_write
from fleet_server.exceptions import FleetServerError, InvalidRequestError

log = logging.getLogger(__name__)

ONLINE_ROLES = ("targets", "snapshot", "timestamp")
BINS_PREFIX = "bins"
BINS_KEY = "bins"
DELEGATED_PATH_PREFIX = "assignments/"  # targets under this prefix live in hash bins
MAX_TARGET_PATH = 200
_SERIALIZER = JSONSerializer(compact=True)


class Publisher(Protocol):
    """Where the repository's files go: retained messages on an MQTT broker."""

    def publish(self, topic: str, payload: bytes, *, retain: bool = True) -> None: ...

    def unpublish(self, topic: str) -> None: ...


class NullPublisher:
    """Publishes nothing (``fleet-server init`` creates the repository offline)."""

    def publish(self, topic: str, payload: bytes, *, retain: bool = True) -> None:
        pass

    def unpublish(self, topic: str) -> None:
        pass


class UnsafeTargetPathError(InvalidRequestError):
    """A target path that could inject topics or escape a directory."""


class RepositoryStateError(FleetServerError):
    """The repository on disk is missing, damaged, or an operation needs the root key."""


@dataclass(frozen=True)
class Expiry:
    """How long each role's metadata stays valid after signing."""

    root: timedelta = timedelta(days=365)
    targets: timedelta = timedelta(days=90)
    snapshot: timedelta = timedelta(days=7)
    timestamp: timedelta = timedelta(days=1)

    def of(self, role: str) -> timedelta:
        return self.targets if role.startswith(BINS_PREFIX) else getattr(self, role)

    def to_json(self) -> dict[str, float]:
        return {k: v.total_seconds() for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict[str, float]) -> Expiry:
        return cls(**{k: timedelta(seconds=v) for k, v in data.items()})


def check_target_path(path: str) -> str:
    """Return ``path`` if it is safe as a TUF target path, an MQTT topic tail and a file path."""
    parts = path.split("/")
    # Guards against topic injection (wildcards, $SYS-like topics) and directory traversal
    # (.., absolute paths, empty segments) through target paths.
    if (
        not path
        or len(path) > MAX_TARGET_PATH
        or path.startswith(("/", "$"))
        or any(c in path for c in "+#\\\0")
        or any(ord(c) < 0x20 for c in path)
        or any(p in ("", ".", "..") for p in parts)
    ):
        raise UnsafeTargetPathError(f"unsafe target path {path!r}")
    return path


def content_url(path: str, sha256: str) -> str:
    """Consistent-snapshot name of a target: ``<dir>/<sha256>.<basename>``."""
    dirname, sep, basename = path.rpartition("/")
    return f"{dirname}{sep}{sha256}.{basename}"


def chunk_manifest(data: bytes) -> tuple[protocol.ChunkManifest, list[bytes]]:
    """Split ``data`` into protocol chunks; returns the manifest and the chunk bytes."""
    pieces = [data[i : i + protocol.CHUNK_SIZE] for i in range(0, len(data), protocol.CHUNK_SIZE)]
    refs = tuple(protocol.ChunkRef(hashlib.sha256(p).hexdigest(), len(p)) for p in pieces)
    return protocol.ChunkManifest(len(data), refs), pieces


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _write_key(path: Path, key: Ed25519PrivateKey, passphrase: bytes | None) -> None:
    enc = BestAvailableEncryption(passphrase) if passphrase else NoEncryption()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, enc)
    atomic_write(path, pem, 0o600)


def _load_signer(path: Path, passphrase: bytes | None = None) -> CryptoSigner:
    try:
        key = load_pem_private_key(path.read_bytes(), passphrase)
    except (OSError, ValueError, TypeError) as e:
        raise RepositoryStateError(f"cannot load signing key {path}: {e}") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise RepositoryStateError(f"{path} is not an ed25519 key")
    return CryptoSigner(key, SSlibKey.from_crypto(key.public_key()))


def _new_key(path: Path, passphrase: bytes | None = None) -> CryptoSigner:
    key = Ed25519PrivateKey.generate()
    _write_key(path, key, passphrase)
    return CryptoSigner(key, SSlibKey.from_crypto(key.public_key()))


def _expires(now: datetime, delta: timedelta) -> datetime:
    return (now + delta).replace(microsecond=0)


class TufRepository:
    """A TUF repository on disk whose files are published through a ``Publisher``.

    Thread-safe: every public method holds one lock. Use ``create`` once, then ``load``.
    """

    def __init__(
        self,
        root_dir: Path,
        publisher: Publisher,
        *,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.root_dir = Path(root_dir)
        self.publisher = publisher
        self._clock = clock or _utcnow
        self._lock = threading.RLock()
        cfg_path = self.root_dir / "repo.json"
        if not cfg_path.exists():
            raise RepositoryStateError(f"{self.root_dir} holds no TUF repository")
        cfg = json.loads(cfg_path.read_text())
        self.expiry = Expiry.from_json(cfg["expiry"])
        self.root_key_path = Path(cfg["root_key_path"])
        self._signers = {
            role: _load_signer(self._key_path(role)) for role in (*ONLINE_ROLES, BINS_KEY)
        }
        md = self.metadata_dir
        self._root: Metadata[Root] = Metadata[Root].from_file(str(md / "root.json"))
        self._timestamp: Metadata[Timestamp] = Metadata[Timestamp].from_file(
            str(md / "timestamp.json")
        )
        snap_v = self._timestamp.signed.snapshot_meta.version
        self._snapshot: Metadata[Snapshot] = Metadata[Snapshot].from_file(
            str(md / f"{snap_v}.snapshot.json")
        )
        self._roles: dict[str, Metadata[Targets]] = {}
        for name, meta in self._snapshot.signed.meta.items():
            role = name[: -len(".json")]
            self._roles[role] = Metadata[Targets].from_file(
                str(md / f"{meta.version}.{quote(role, '')}.json")
            )
        state = json.loads((self.root_dir / "state.json").read_text())
        self._dying: set[str] = set(state.get("dying", []))
        self._index: dict[str, list[list[Any]]] = json.loads(
            (self.root_dir / "index.json").read_text()
        )

    # -- creation ----------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        root_dir: Path,
        *,
        offline_root_key_path: Path | None = None,
        passphrase: bytes | None = None,
        expiry: Expiry | None = None,
        bin_bits: int = 8,
        publisher: Publisher | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> TufRepository:
        """Make keys and version 1 of every role. The root key goes to its own file
        (``offline_root_key_path``, default ``root_dir/root-key.pem``: move it offline)."""
        root_dir = Path(root_dir)
        if (root_dir / "repo.json").exists():
            raise RepositoryStateError(f"{root_dir} already holds a TUF repository")
        expiry = expiry or Expiry()
        now = (clock or _utcnow)()
        root_key_path = Path(offline_root_key_path or root_dir / "root-key.pem").absolute()
        (root_dir / "keys").mkdir(parents=True, exist_ok=True)
        root_signer = _new_key(root_key_path, passphrase)
        signers = {r: _new_key(root_dir / "keys" / f"{r}.pem") for r in (*ONLINE_ROLES, BINS_KEY)}

        root = Root(expires=_expires(now, expiry.root), consistent_snapshot=True)
        root.add_key(root_signer.public_key, "root")
        for role in ONLINE_ROLES:
            root.add_key(signers[role].public_key, role)
        root_md = Metadata(root)
        root_md.sign(root_signer)

        targets = Targets(expires=_expires(now, expiry.targets))
        bins_key = signers[BINS_KEY].public_key
        targets.delegations = Delegations(
            keys={bins_key.keyid: bins_key},
            succinct_roles=SuccinctRoles([bins_key.keyid], 1, bin_bits, BINS_PREFIX),
        )
        roles: dict[str, Metadata[Targets]] = {"targets": Metadata(targets)}
        for name in targets.delegations.succinct_roles.get_roles():  # type: ignore[union-attr]
            roles[name] = Metadata(Targets(expires=_expires(now, expiry.targets)))
        snapshot = Metadata(Snapshot(expires=_expires(now, expiry.snapshot)))
        timestamp = Metadata(Timestamp(expires=_expires(now, expiry.timestamp)))

        md_dir = root_dir / "metadata"
        md_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(md_dir / "1.root.json", root_md.to_bytes(_SERIALIZER))
        atomic_write(md_dir / "root.json", root_md.to_bytes(_SERIALIZER))
        for role, m in roles.items():
            signer = signers["targets"] if role == "targets" else signers[BINS_KEY]
            m.sign(signer)
            data = m.to_bytes(_SERIALIZER)
            atomic_write(md_dir / f"1.{role}.json", data)
            snapshot.signed.meta[f"{role}.json"] = MetaFile(1, len(data))
        snapshot.sign(signers["snapshot"])
        snap_bytes = snapshot.to_bytes(_SERIALIZER)
        atomic_write(md_dir / "1.snapshot.json", snap_bytes)
        timestamp.signed.snapshot_meta = MetaFile(1, len(snap_bytes))
        timestamp.sign(signers["timestamp"])
        atomic_write(md_dir / "timestamp.json", timestamp.to_bytes(_SERIALIZER))
        atomic_write(root_dir / "state.json", b'{"dying": []}')
        atomic_write(root_dir / "index.json", b"{}")
        cfg = {"expiry": expiry.to_json(), "root_key_path": str(root_key_path)}
        atomic_write(root_dir / "repo.json", json.dumps(cfg, indent=1).encode())
        repo = cls(root_dir, publisher or NullPublisher(), clock=clock)
        if publisher is not None:
            repo.republish_all()
        return repo

    @classmethod
    def load(
        cls,
        root_dir: Path,
        publisher: Publisher,
        *,
        clock: Callable[[], datetime] | None = None,
    ) -> TufRepository:
        return cls(root_dir, publisher, clock=clock)

    # -- paths -------------------------------------------------------------------------------
    @property
    def metadata_dir(self) -> Path:
        return self.root_dir / "metadata"

    @property
    def targets_dir(self) -> Path:
        return self.root_dir / "targets"

    def _key_path(self, role: str) -> Path:
        return self.root_dir / "keys" / f"{role}.pem"

    # -- reading -----------------------------------------------------------------------------
    def root_bytes(self) -> bytes:
        """The current root metadata (what an enrolling device pins)."""
        with self._lock:
            return (self.metadata_dir / "root.json").read_bytes()

    @property
    def targets_version(self) -> int:
        """Version of the snapshot: it grows with every change to any targets role
        (assignments change hash bins, not the top-level targets)."""
        with self._lock:
            return self._snapshot.signed.version

    @property
    def root_version(self) -> int:
        with self._lock:
            return self._root.signed.version

    def target_info(self, path: str) -> TargetFile | None:
        with self._lock:
            return self._roles[self._role_for(path)].signed.targets.get(path)

    def _role_for(self, path: str) -> str:
        if path.startswith(DELEGATED_PATH_PREFIX):
            succinct = self._roles["targets"].signed.delegations.succinct_roles  # type: ignore[union-attr]
            assert succinct is not None
            return succinct.get_role_for_target(path)
        return "targets"

    # -- changing targets --------------------------------------------------------------------
    def add_targets(
        self, files: dict[str, bytes], custom: dict[str, dict[str, Any]] | None = None
    ) -> None:
        """Sign and publish ``files`` (path -> content) in one new repository version."""
        for path in files:
            check_target_path(path)
        with self._lock:
            before = self._live_topics()
            changed: set[str] = set()
            for path, data in files.items():
                info = TargetFile.from_data(path, data, ["sha256"])
                extra = (custom or {}).get(path)
                if extra is not None:
                    info.unrecognized_fields["custom"] = extra
                url = content_url(path, info.hashes["sha256"])
                atomic_write(self.targets_dir / url, data)
                self._publish_content(url, data)
                role = self._role_for(path)
                self._roles[role].signed.targets[path] = info
                changed.add(role)
            self._commit(changed, before)

    def remove_targets(self, paths: Iterable[str]) -> None:
        with self._lock:
            before = self._live_topics()
            changed: set[str] = set()
            for path in paths:
                role = self._role_for(path)
                if self._roles[role].signed.targets.pop(path, None) is not None:
                    changed.add(role)
            if changed:
                self._commit(changed, before)

    def _publish_content(self, url: str, data: bytes) -> None:
        manifest, pieces = chunk_manifest(data)
        live_chunks = {c[0] for chunks in self._index.values() for c in chunks}
        for ref, piece in zip(manifest.chunks, pieces, strict=True):
            if ref.sha256 not in live_chunks:  # content-addressed: publish each chunk once
                self.publisher.publish(protocol.chunk_topic(ref.sha256), piece, retain=True)
        self.publisher.publish(protocol.TUF_TARGETS_PREFIX + url, manifest.to_bytes(), retain=True)
        self._index[url] = [[c.sha256, c.length] for c in manifest.chunks]

    # -- signing and publishing ----------------------------------------------------------------
    def _commit(self, changed_roles: set[str], before: set[str]) -> None:
        """Bump ``changed_roles`` -> snapshot -> timestamp, write, publish, collect garbage."""
        now = self._clock()
        for role in sorted(changed_roles, key=lambda r: r == "targets"):  # bins first
            self._resign_targets_role(role, now)
        self._resign_snapshot(now)
        self._resign_timestamp(now)
        after = self._live_topics()
        self._collect(before, after)

    def _resign_targets_role(self, role: str, now: datetime) -> None:
        md = self._roles[role]
        md.signed.version += 1
        md.signed.expires = _expires(now, self.expiry.of(role))
        md.sign(self._signers["targets" if role == "targets" else BINS_KEY])
        data = md.to_bytes(_SERIALIZER)
        name = f"{md.signed.version}.{quote(role, '')}.json"
        atomic_write(self.metadata_dir / name, data)
        self.publisher.publish(protocol.TUF_METADATA_PREFIX + name, data, retain=True)
        self._snapshot.signed.meta[f"{role}.json"] = MetaFile(md.signed.version, len(data))

    def _resign_snapshot(self, now: datetime) -> None:
        snap = self._snapshot
        snap.signed.version += 1
        snap.signed.expires = _expires(now, self.expiry.snapshot)
        snap.sign(self._signers["snapshot"])
        data = snap.to_bytes(_SERIALIZER)
        name = f"{snap.signed.version}.snapshot.json"
        atomic_write(self.metadata_dir / name, data)
        self.publisher.publish(protocol.TUF_METADATA_PREFIX + name, data, retain=True)
        self._timestamp.signed.snapshot_meta = MetaFile(snap.signed.version, len(data))

    def _resign_timestamp(self, now: datetime) -> None:
        ts = self._timestamp
        ts.signed.version += 1
        ts.signed.expires = _expires(now, self.expiry.timestamp)
        ts.sign(self._signers["timestamp"])
        data = ts.to_bytes(_SERIALIZER)
        # Also kept versioned on disk (an HTTPS mirror may serve them); published unversioned.
        atomic_write(self.metadata_dir / "timestamp.json", data)
        self.publisher.publish(protocol.TUF_METADATA_PREFIX + "timestamp.json", data, retain=True)

    def _write_root(self, root_md: Metadata[Root]) -> None:
        data = root_md.to_bytes(_SERIALIZER)
        name = f"{root_md.signed.version}.root.json"
        atomic_write(self.metadata_dir / name, data)
        atomic_write(self.metadata_dir / "root.json", data)
        self.publisher.publish(protocol.TUF_METADATA_PREFIX + name, data, retain=True)
        self._root = root_md

    def _live_topics(self) -> set[str]:
        """Every topic an agent may read for the current repository version."""
        live = {protocol.TUF_METADATA_PREFIX + "timestamp.json"}
        live.add(protocol.TUF_METADATA_PREFIX + f"{self._snapshot.signed.version}.snapshot.json")
        for role, md in self._roles.items():
            live.add(protocol.TUF_METADATA_PREFIX + f"{md.signed.version}.{quote(role, '')}.json")
            for path, info in md.signed.targets.items():
                url = content_url(path, info.hashes["sha256"])
                live.add(protocol.TUF_TARGETS_PREFIX + url)
                for sha, _ in self._index.get(url, []):
                    live.add(protocol.chunk_topic(sha))
        return live

    def _collect(self, before: set[str], after: set[str]) -> None:
        """Unpublish what died one change ago (agents mid-cycle may still read it)."""
        for topic in sorted(self._dying - after):
            self.publisher.unpublish(topic)
            if topic.startswith(protocol.TUF_TARGETS_PREFIX):
                url = topic[len(protocol.TUF_TARGETS_PREFIX) :]
                self._index.pop(url, None)
                (self.targets_dir / url).unlink(missing_ok=True)
            elif topic.startswith(protocol.TUF_METADATA_PREFIX):
                (self.metadata_dir / topic[len(protocol.TUF_METADATA_PREFIX) :]).unlink(
                    missing_ok=True
                )
        self._dying = before - after
        atomic_write(
            self.root_dir / "state.json", json.dumps({"dying": sorted(self._dying)}).encode()
        )
        atomic_write(self.root_dir / "index.json", json.dumps(self._index).encode())

    def republish_all(self) -> None:
        """Publish every live file again (a broker that restarted may have forgotten them)."""
        with self._lock:
            for v in range(1, self._root.signed.version + 1):
                name = f"{v}.root.json"
                path = self.metadata_dir / name
                if path.exists():
                    self.publisher.publish(
                        protocol.TUF_METADATA_PREFIX + name, path.read_bytes(), retain=True
                    )
            for md in self._roles.values():
                for tpath, info in md.signed.targets.items():
                    url = content_url(tpath, info.hashes["sha256"])
                    data = (self.targets_dir / url).read_bytes()
                    manifest, pieces = chunk_manifest(data)
                    for ref, piece in zip(manifest.chunks, pieces, strict=True):
                        self.publisher.publish(protocol.chunk_topic(ref.sha256), piece)
                    self.publisher.publish(
                        protocol.TUF_TARGETS_PREFIX + url, manifest.to_bytes(), retain=True
                    )
            for role, md in self._roles.items():
                name = f"{md.signed.version}.{quote(role, '')}.json"
                self.publisher.publish(
                    protocol.TUF_METADATA_PREFIX + name,
                    (self.metadata_dir / name).read_bytes(),
                )
            name = f"{self._snapshot.signed.version}.snapshot.json"
            self.publisher.publish(
                protocol.TUF_METADATA_PREFIX + name, (self.metadata_dir / name).read_bytes()
            )
            self.publisher.publish(
                protocol.TUF_METADATA_PREFIX + "timestamp.json",
                (self.metadata_dir / "timestamp.json").read_bytes(),
            )

    # -- expiry --------------------------------------------------------------------------------
    def refresh_expiring(self, within: timedelta) -> list[str]:
        """Re-sign online roles that expire within ``within``; returns the roles re-signed.

        The root cannot be re-signed here (its key is offline): a root close to expiry is
        logged as an error.
        """
        with self._lock:
            now = self._clock()
            horizon = now + within
            if self._root.signed.expires <= horizon:
                log.error(
                    "TUF root expires %s: re-sign it with the offline key",
                    self._root.signed.expires,
                )
            before = self._live_topics()
            roles = sorted(r for r, md in self._roles.items() if md.signed.expires <= horizon)
            for role in sorted(roles, key=lambda r: r == "targets"):
                self._resign_targets_role(role, now)
            done = list(roles)
            if roles or self._snapshot.signed.expires <= horizon:
                self._resign_snapshot(now)
                done.append("snapshot")
            if done or self._timestamp.signed.expires <= horizon:
                self._resign_timestamp(now)
                done.append("timestamp")
                self._collect(before, self._live_topics())
            return done

    # -- keys ----------------------------------------------------------------------------------
    def rotate_online_key(self, role: str, *, root_passphrase: bytes | None = None) -> None:
        """Replace the online key of ``role`` (targets, snapshot, timestamp or bins).

        Top-level roles need a new root version signed with the offline root key; the bins
        key is delegated by targets and needs only the online targets key. Agents follow
        without reinstalling: they walk the root chain, then verify with the new key.
        """
        if role not in (*ONLINE_ROLES, BINS_KEY):
            raise InvalidRequestError(f"no online role {role!r}")
        with self._lock:
            before = self._live_topics()
            now = self._clock()
            old_path = self._key_path(role)
            new_path = old_path.with_suffix(".pem.new")
            # The root key is loaded first: a wrong passphrase changes nothing.
            root_signer = (
                None if role == BINS_KEY else _load_signer(self.root_key_path, root_passphrase)
            )
            new = _new_key(new_path)
            if role == BINS_KEY:
                targets = self._roles["targets"].signed
                assert targets.delegations is not None
                old_id = self._signers[BINS_KEY].public_key.keyid
                targets.add_key(new.public_key)
                targets.revoke_key(old_id)
                self._signers[BINS_KEY] = new
                changed = set(self._roles)  # every bin is re-signed with the new key
            else:
                assert root_signer is not None
                root_md = self._root
                root_md.signed.revoke_key(self._signers[role].public_key.keyid, role)
                root_md.signed.add_key(new.public_key, role)
                root_md.signed.version += 1
                root_md.signed.expires = _expires(now, self.expiry.root)
                root_md.sign(root_signer)
                self._write_root(root_md)
                self._signers[role] = new
                changed = {"targets"} if role == "targets" else set()
            os.replace(new_path, old_path)
            for r in sorted(changed, key=lambda r: r == "targets"):
                self._resign_targets_role(r, now)
            self._resign_snapshot(now)
            self._resign_timestamp(now)
            self._collect(before, self._live_topics())

    def rotate_root(
        self,
        new_root_key_path: Path,
        *,
        old_passphrase: bytes | None = None,
        new_passphrase: bytes | None = None,
    ) -> None:
        """Replace the root key: the new root is signed by the old and the new key, so
        agents that trust the old root accept it and then trust only the new key."""
        with self._lock:
            old = _load_signer(self.root_key_path, old_passphrase)
            new = _new_key(Path(new_root_key_path), new_passphrase)
            root_md = self._root
            root_md.signed.revoke_key(old.public_key.keyid, "root")
            root_md.signed.add_key(new.public_key, "root")
            root_md.signed.version += 1
            root_md.signed.expires = _expires(self._clock(), self.expiry.root)
            root_md.sign(new)
            root_md.sign(old, append=True)  # the old threshold must sign the new root
            self._write_root(root_md)
            self.root_key_path = Path(new_root_key_path).absolute()
            cfg = {"expiry": self.expiry.to_json(), "root_key_path": str(self.root_key_path)}
            atomic_write(self.root_dir / "repo.json", json.dumps(cfg, indent=1).encode())
