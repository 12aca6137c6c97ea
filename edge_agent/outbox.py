"""The durable, bounded upstream outbox: a SQLite file of envelopes waiting for the server's ack.

Durability (WAL, ``synchronous=NORMAL``): every ``append`` is a committed transaction, so a
killed process (SIGKILL, OOM, crash) loses nothing that ``append`` returned; only a power
loss or kernel crash can lose the commits since the last WAL sync. ``pending`` syncs the WAL
(a checkpoint) before it hands records to the sender, so a record is never sent before it is
on disk: a power loss can lose only the last unsent, unsynced batch, and can never make a
sequence number be used twice (the server would drop the second record as a duplicate).
``synchronous=FULL`` would fsync on every append; bench/telemetry.py measures both.

Sequence numbers grow strictly and survive restarts (``meta.last_seq`` is updated in the
record's own transaction). A new database starts above the clock in milliseconds, so even an
outbox deleted or replaced after corruption does not reuse numbers the server has stored.

Bounds: records older than ``max_age_s`` expire; over ``max_bytes`` the lowest-priority,
oldest records go first. Both are counted per kind (cumulative, persisted) for the heartbeat.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from edge_agent import protocol
from edge_agent.exceptions import ProtocolError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DEFAULT_MAX_RECORD_BYTES = 256 * 1024
_TRIM_CHUNK = 256

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    priority INTEGER NOT NULL,
    ts REAL NOT NULL,
    size INTEGER NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS records_drop_order ON records (priority, seq);
CREATE INDEX IF NOT EXISTS records_age ON records (ts);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS drops (kind TEXT PRIMARY KEY, count INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class OutboxStats:
    depth: int  # records waiting for an ack
    bytes: int  # their encoded envelope size
    dropped_by_kind: dict[str, int] = field(default_factory=dict)  # cumulative, never reset


class Outbox:
    """Thread-safe; one instance per database file."""

    def __init__(
        self,
        path: Path,
        device_id: str,
        *,
        max_bytes: int,
        max_age_s: float,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_bytes <= 0 or max_age_s <= 0 or max_record_bytes <= 0:
            raise RuntimeError("outbox bounds must be positive")
        if synchronous not in ("NORMAL", "FULL"):
            raise RuntimeError(f"synchronous must be NORMAL or FULL, not {synchronous!r}")
        self.path = Path(path)
        self.device_id = protocol.validate_device_id(device_id)
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.max_record_bytes = min(max_record_bytes, max_bytes)
        self._clock = clock
        self._lock = threading.Lock()
        self._dirty = False  # commits since the last WAL sync
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = self._open(synchronous)
        except sqlite3.DatabaseError as e:
            # A corrupt file must not stop the agent from serving and reporting: keep it
            # aside for inspection and start a new one (its seqs start above the clock).
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            log.error("outbox %s unreadable (%s); moved to %s", self.path, e, aside)
            for suffix in ("", "-wal", "-shm"):
                src = Path(str(self.path) + suffix)
                if src.exists():
                    src.replace(Path(str(aside) + suffix))
            self._db = self._open(synchronous)
        self._last_seq = self._meta("last_seq")
        row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM records").fetchone()
        self._depth, self._bytes = int(row[0]), int(row[1])
        self._last_drop_log = float("-inf")
        self._oldest_ts: float | None = None
        self._oldest_known = False

    def _open(self, synchronous: str) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={synchronous}")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise sqlite3.DatabaseError(f"unknown outbox schema version {version}")
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            floor = int(time.time() * 1000)  # see the module docstring
            db.execute("INSERT OR IGNORE INTO meta VALUES ('last_seq', ?)", (floor,))
        except BaseException:
            db.close()
            raise
        return db

    def _meta(self, key: str) -> int:
        return int(self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0])

    # -- writing --------------------------------------------------------------------------
    def append(self, kind: str, body: dict[str, Any], priority: int) -> protocol.Envelope:
        """Store one record durably (committed before return) and return its envelope.

        The record may itself be dropped at once when the outbox is full of records of
        higher priority; that is counted like any other drop.
        """
        if kind not in protocol.ENVELOPE_KINDS:
            raise ProtocolError(f"outbox: unknown envelope kind {kind!r}")
        with self._lock:
            now = self._clock()
            env = protocol.Envelope(self.device_id, self._last_seq + 1, kind, now, body)
            body_json = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
            # The envelope is its frame around the same canonical body JSON: encode once.
            frame = protocol.Envelope(self.device_id, env.seq, kind, now, {}).to_bytes()
            size = len(frame) - 2 + len(body_json)
            # Guards against one runaway record (a huge body) evicting the whole outbox or
            # exceeding what the broker and the server accept for one message.
            if size > self.max_record_bytes:
                raise ProtocolError(
                    f"outbox: {kind} record of {size} bytes exceeds {self.max_record_bytes}"
                )
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute(
                    "INSERT INTO records VALUES (?, ?, ?, ?, ?, ?)",
                    (env.seq, kind, int(priority), now, size, body_json),
                )
                db.execute("UPDATE meta SET value = ? WHERE key = 'last_seq'", (env.seq,))
                dropped: dict[str, int] = {}
                depth, total = self._depth + 1, self._bytes + size
                depth, total = self._expire(now, depth, total, dropped)
                depth, total = self._trim(depth, total, dropped)
                for k, n in dropped.items():
                    db.execute(
                        "INSERT INTO drops VALUES (?, ?) "
                        "ON CONFLICT(kind) DO UPDATE SET count = count + excluded.count",
                        (k, n),
                    )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                self._oldest_known = False
                raise
            self._last_seq, self._depth, self._bytes = env.seq, depth, total
            if self._oldest_known:
                self._oldest_ts = now if self._oldest_ts is None else min(self._oldest_ts, now)
            self._dirty = True
            if dropped and now - self._last_drop_log >= 60.0:  # at most once a minute
                self._last_drop_log = now
                log.warning("outbox full or stale: dropped %s (totals in stats())", dropped)
            return env

    def _expire(
        self, now: float, depth: int, total: int, dropped: dict[str, int]
    ) -> tuple[int, int]:
        if not self._oldest_known:
            row = self._db.execute("SELECT MIN(ts) FROM records").fetchone()
            self._oldest_ts, self._oldest_known = row[0], True
        cutoff = now - self.max_age_s
        if self._oldest_ts is None or self._oldest_ts >= cutoff:
            return depth, total
        for kind, n, nbytes in self._db.execute(
            "SELECT kind, COUNT(*), SUM(size) FROM records WHERE ts < ? GROUP BY kind", (cutoff,)
        ).fetchall():
            dropped[kind] = dropped.get(kind, 0) + int(n)
            depth, total = depth - int(n), total - int(nbytes)
        self._db.execute("DELETE FROM records WHERE ts < ?", (cutoff,))
        self._oldest_known = False
        return depth, total

    def _trim(self, depth: int, total: int, dropped: dict[str, int]) -> tuple[int, int]:
        while total > self.max_bytes:
            victims: list[int] = []
            for seq, kind, size in self._db.execute(
                "SELECT seq, kind, size FROM records ORDER BY priority, seq LIMIT ?",
                (_TRIM_CHUNK,),
            ).fetchall():
                if total <= self.max_bytes:
                    break
                victims.append(seq)
                dropped[kind] = dropped.get(kind, 0) + 1
                depth, total = depth - 1, total - int(size)
            if not victims:
                raise RuntimeError("outbox byte count out of step with its records")
            self._db.executemany("DELETE FROM records WHERE seq = ?", [(s,) for s in victims])
            self._oldest_known = False
        return depth, total

    # -- reading and acknowledging --------------------------------------------------------
    def sync(self) -> None:
        """Make every committed record durable against power loss (WAL checkpoint)."""
        with self._lock:
            self._sync_locked()

    def _sync_locked(self) -> None:
        if self._dirty:
            # In WAL mode with synchronous=NORMAL, a checkpoint fsyncs the WAL first.
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
            self._dirty = False

    def pending(self, limit: int = 100) -> list[protocol.Envelope]:
        """The oldest ``limit`` unacknowledged records, in sequence order, synced to disk."""
        with self._lock:
            self._sync_locked()  # never send a record a power loss could still take back
            rows = self._db.execute(
                "SELECT seq, kind, ts, body FROM records ORDER BY seq LIMIT ?", (int(limit),)
            ).fetchall()
        return [
            protocol.Envelope(self.device_id, int(seq), str(kind), float(ts), json.loads(body))
            for seq, kind, ts, body in rows
        ]

    def ack(self, seqs: Iterable[int]) -> int:
        """Delete records the server acknowledged; unknown seqs are ignored. Returns count."""
        wanted = sorted({int(s) for s in seqs})
        if not wanted:
            return 0
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                removed, nbytes = 0, 0
                for i in range(0, len(wanted), 500):
                    part = wanted[i : i + 500]
                    marks = ",".join("?" * len(part))
                    row = db.execute(
                        f"SELECT COUNT(*), COALESCE(SUM(size), 0) FROM records "
                        f"WHERE seq IN ({marks})",
                        part,
                    ).fetchone()
                    db.execute(f"DELETE FROM records WHERE seq IN ({marks})", part)
                    removed, nbytes = removed + int(row[0]), nbytes + int(row[1])
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            self._depth -= removed
            self._bytes -= nbytes
            self._oldest_known = False  # deletes need no sync before sending: not dirty
            return removed

    def stats(self) -> OutboxStats:
        with self._lock:
            drops = {
                str(k): int(n)
                for k, n in self._db.execute("SELECT kind, count FROM drops ORDER BY kind")
            }
            return OutboxStats(depth=self._depth, bytes=self._bytes, dropped_by_kind=drops)

    @property
    def last_seq(self) -> int:
        with self._lock:
            return self._last_seq

    def close(self) -> None:
        with self._lock:
            self._sync_locked()
            self._db.close()
