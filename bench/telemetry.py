"""Telemetry benchmark, agent side: outbox rates, summarizer cost, summary bytes per day.

Sections (each a function returning table rows; add more to ``SECTIONS``):

* ``outbox``: append rate with ``synchronous=NORMAL`` (our setting) against ``FULL`` and
  against a bare SQLite insert (the baseline, same file system, same run); append with the
  sender's sync barrier every 50 records; replay rate (``pending(200)`` + ``ack``); append
  rate while full (every append drops the oldest routine record).
* ``observe``: microseconds per ``WindowSummarizer.observe`` call, single rows (the local
  API's shape) and batches, against a naive per-feature ``searchsorted``/``bincount`` per
  call baseline.
* ``bytes``: summary bytes per device per day, 20 numeric features plus a binary
  classifier's outputs, hourly windows, as the envelope the outbox stores and sends
  (compact JSON), and zlib-compressed for comparison; the baseline is the raw rows as
  compact JSON. Goal: at most 35 KB a day.

* ``server_ingest``: summaries (20 features) per second through
  ``fleet_server.ingest.ingest`` in batches of 500 (as the server's ingest loop takes them),
  many devices, into SQLite and into PostgreSQL (when one answers at ``EDGEFLEET_TEST_PG``
  or 127.0.0.1:5432; a fresh database, dropped afterwards); the baseline is a plain
  executemany INSERT of the same rows, without ON CONFLICT, RETURNING and device updates.
  Goal: at least 5,000 per second on PostgreSQL. Then a redelivery pass (all duplicates),
  and end to end: paho publishes to ``edgefleet/devices/<id>/up`` on a real Mosquitto, a
  running server stores them; the time until the last row is in the database.

    .venv/bin/python -m bench.telemetry [--only outbox,observe,bytes] [--dir DIR] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import sqlite3
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.outbox import Outbox
from edge_agent.protocol import Envelope
from edge_agent.summaries import WindowSummarizer

Rows = list[dict[str, Any]]


def _heartbeat_body(i: int) -> dict[str, Any]:
    """About the size of the daemon's heartbeat body (~600 bytes)."""
    return {
        "state": "online",
        "instance": "0123456789abcdef",
        "models": {"churn": 3},
        "inference_counts": {"churn": 1000 + i},
        "latency": {
            "scheme": "log2:25us:20",
            "counts": [0, 5, 80, 700, 200, 15],
            "n": 1000,
            "sum_s": 0.321,
            "max_s": 0.004,
        },
        "health": {
            "cpu_percent": 3.2,
            "load": [0.1, 0.2, 0.3],
            "rss_bytes": 98_000_000,
            "rss_peak_bytes": 99_000_000,
            "mem_total_bytes": 4_000_000_000,
            "mem_available_bytes": 3_000_000_000,
            "disk_free_bytes": 20_000_000_000,
            "disk_total_bytes": 30_000_000_000,
        },
        "outbox": {"depth": 3, "bytes": 2000, "dropped": {}},
    }


def _ignore(_: object) -> None:
    return None


# -- outbox ----------------------------------------------------------------------------------
def _rate(n: int, fn: Callable[[int], None]) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - t0)


def _bare_sqlite(path: Path, n: int, synchronous: str) -> float:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    db.execute("CREATE TABLE r (seq INTEGER PRIMARY KEY, body BLOB)")
    body = json.dumps(_heartbeat_body(0)).encode()

    def one(i: int) -> None:
        db.execute("INSERT INTO r VALUES (?, ?)", (i, body))  # autocommit: one transaction

    rate = _rate(n, one)
    db.close()
    return rate


def bench_outbox(work: Path, quick: bool) -> Rows:
    n = 500 if quick else 3000
    rows: Rows = []
    bare = {s: _bare_sqlite(work / f"bare-{s}.db", n, s) for s in ("NORMAL", "FULL")}
    for sync in ("NORMAL", "FULL"):
        box = Outbox(
            work / f"o-{sync}.db",
            "bench-1",
            max_bytes=1 << 30,
            max_age_s=1e9,
            synchronous=sync,
        )

        def append(i: int, b: Outbox = box) -> None:
            b.append("heartbeat", _heartbeat_body(i), 0)

        rate = _rate(n, append)
        rows.append(
            {
                "measure": f"append, synchronous={sync}",
                "per_s": rate,
                "baseline": f"bare sqlite insert {sync}",
                "baseline_per_s": bare[sync],
                "ratio": rate / bare[sync],
            }
        )
        box.close()
    box = Outbox(work / "o-barrier.db", "bench-1", max_bytes=1 << 30, max_age_s=1e9)

    def with_barrier(i: int) -> None:
        box.append("heartbeat", _heartbeat_body(i), 0)
        if i % 50 == 49:
            box.pending(1)  # the sender's sync: durable against power loss before sending

    rate = _rate(n, with_barrier)
    rows.append(
        {
            "measure": "append + sync barrier every 50, NORMAL",
            "per_s": rate,
            "baseline": "bare sqlite insert FULL",
            "baseline_per_s": bare["FULL"],
            "ratio": rate / bare["FULL"],
        }
    )
    total = box.stats().depth
    t0 = time.perf_counter()
    while True:
        batch = box.pending(200)
        if not batch:
            break
        box.ack([e.seq for e in batch])
    replay = total / (time.perf_counter() - t0)
    rows.append(
        {
            "measure": "replay: pending(200) + ack",
            "per_s": replay,
            "baseline": "append NORMAL",
            "baseline_per_s": rows[0]["per_s"],
            "ratio": replay / rows[0]["per_s"],
        }
    )
    box.close()
    size = len(Envelope("bench-1", 10**12, "heartbeat", time.time(), _heartbeat_body(0)).to_bytes())
    full = Outbox(work / "o-full.db", "bench-1", max_bytes=size * 200, max_age_s=1e9)
    for i in range(210):
        full.append("heartbeat", _heartbeat_body(i), 0)
    rate = _rate(n, lambda i: _ignore(full.append("heartbeat", _heartbeat_body(i), 0)))
    rows.append(
        {
            "measure": "append while full (drops one each)",
            "per_s": rate,
            "baseline": "append NORMAL",
            "baseline_per_s": rows[0]["per_s"],
            "ratio": rate / rows[0]["per_s"],
            "note": f"dropped {full.stats().dropped_by_kind}",
        }
    )
    full.close()
    return rows


# -- summaries ---------------------------------------------------------------------------------
def _profile(n_features: int = 20) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(5000, n_features)) * 3 + 10
    features = []
    for j in range(n_features):
        edges = [float(e) for e in np.quantile(ref[:, j], np.linspace(0.1, 0.9, 9))]
        features.append(
            {
                "name": f"f{j}",
                "input": "input",
                "index": j,
                "kind": "numeric",
                "edges": edges,
                "counts": [500] * 10,
                "nulls": 0,
            }
        )
    return {
        "version": 1,
        "rows": 5000,
        "features": features,
        "score": {
            "output": "probabilities",
            "reduce": "column",
            "column": 1,
            "edges": [float(e) for e in np.linspace(0.1, 0.9, 9)],
            "counts": [500] * 10,
        },
        "classes": {"output": "label", "mix": {"0": 0.5, "1": 0.5}},
    }


def _traffic(rng: np.random.Generator, n: int, n_features: int = 20) -> tuple[Any, Any]:
    x = (rng.normal(size=(n, n_features)) * 3 + 10).astype(np.float32)
    p1 = rng.uniform(size=n).astype(np.float32)
    return {"input": x}, {
        "label": (p1 > 0.5).astype(np.int64),
        "probabilities": np.column_stack([1 - p1, p1]),
    }


def bench_observe(work: Path, quick: bool) -> Rows:
    profile = _profile()
    rng = np.random.default_rng(1)
    n = 2000 if quick else 20000
    ins, outs = _traffic(rng, n)
    singles = [
        ({"input": ins["input"][i : i + 1]}, {k: v[i : i + 1] for k, v in outs.items()})
        for i in range(n)
    ]
    s = WindowSummarizer(profile, min_rows=1)
    t0 = time.perf_counter()
    for a, b in singles:
        s.observe(a, b)
    s.flush()
    ours = (time.perf_counter() - t0) / n * 1e6
    edges = [np.asarray(f["edges"]) for f in profile["features"]]
    counts = [np.zeros(len(e) + 1, dtype=np.int64) for e in edges]

    def naive(a: dict[str, np.ndarray]) -> None:
        x = a["input"]
        for j, e in enumerate(edges):
            counts[j] += np.bincount(
                np.searchsorted(e, x[:, j], side="right"), minlength=len(e) + 1
            )

    t0 = time.perf_counter()
    for a, _ in singles:
        naive(a)
    base = (time.perf_counter() - t0) / n * 1e6
    rows: Rows = [
        {
            "measure": "observe, 1 row per call (us/row)",
            "per_s": 1e6 / ours,
            "us": ours,
            "baseline": "per-feature searchsorted per call",
            "baseline_us": base,
            "ratio": base / ours,
        }
    ]
    s = WindowSummarizer(profile, min_rows=1)
    t0 = time.perf_counter()
    for i in range(0, n, 256):
        s.observe(
            {"input": ins["input"][i : i + 256]}, {k: v[i : i + 256] for k, v in outs.items()}
        )
    s.flush()
    batch = (time.perf_counter() - t0) / n * 1e6
    rows.append(
        {
            "measure": "observe, 256 rows per call (us/row)",
            "per_s": 1e6 / batch,
            "us": batch,
            "baseline": "1 row per call",
            "baseline_us": ours,
            "ratio": ours / batch,
        }
    )
    return rows


def bench_bytes(work: Path, quick: bool) -> Rows:
    profile = _profile()
    rng = np.random.default_rng(2)
    rows: Rows = []
    for per_hour in (60, 3600, 360_000):
        now = [0.0]
        s = WindowSummarizer(profile, clock=lambda now=now: now[0])  # type: ignore[misc]
        wire = compressed = raw = 0
        messages = 0
        seq = 1_700_000_000_000
        for _hour in range(24):
            ins, outs = _traffic(rng, per_hour)
            for i in range(0, per_hour, 10_000):  # fed in chunks, as traffic arrives
                s.observe(
                    {"input": ins["input"][i : i + 10_000]},
                    {k: v[i : i + 10_000] for k, v in outs.items()},
                )
            sample = min(per_hour, 1000)  # raw rows as JSON, measured on a sample
            raw += (
                per_hour
                * len(
                    json.dumps(
                        {
                            "rows": ins["input"][:sample].round(4).tolist(),
                            "label": outs["label"][:sample].tolist(),
                        },
                        separators=(",", ":"),
                    ).encode()
                )
                // sample
            )
            now[0] += 3600
            body = s.flush()
            if body is None:
                continue
            seq += 1
            env = Envelope(
                "device-0001", seq, "summary", now[0], {"model": "churn", "version": 3, **body}
            )
            data = env.to_bytes()
            wire += len(data)
            compressed += len(zlib.compress(data, 9))
            messages += 1
        rows.append(
            {
                "measure": f"summary bytes/day, 20 features, {per_hour} rows/h",
                "messages": messages,
                "bytes": wire,
                "zlib_bytes": compressed,
                "per_message": wire // max(messages, 1),
                "baseline": "raw rows as JSON",
                "baseline_bytes": raw,
                "ratio": raw / wire,
                "goal_ok": wire <= 35_000,
            }
        )
    return rows


# -- server ingest ------------------------------------------------------------------------------
PG_ADMIN_URL = os.environ.get("EDGEFLEET_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
INGEST_BATCH = 500  # what FleetServices._ingest_loop takes from the queue at most


@contextmanager
def _postgres_db() -> Iterator[str | None]:
    """A fresh PostgreSQL database (dropped afterwards), or None when none answers."""
    try:
        import psycopg

        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except Exception:
        yield None
        return
    name = "edgefleet_bench_" + secrets.token_hex(4)
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    finally:
        admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        admin.close()


def _summary_envelopes(n: int, n_devices: int) -> list[Envelope]:
    """Hourly summaries as WindowSummarizer makes them (20 features), many devices."""
    s = WindowSummarizer(_profile(), min_rows=1)
    rng = np.random.default_rng(3)
    bodies = []
    for _ in range(8):
        ins, outs = _traffic(rng, 3600)
        s.observe(ins, outs)
        body = s.flush()
        assert body is not None
        bodies.append({"model": "churn", "version": 3, **body})
    t0 = 1_700_000_000.0
    return [
        Envelope(
            f"bench-dev-{i % n_devices:04d}",
            1_000_000 + i // n_devices,
            "summary",
            t0 + 3600 * (i // n_devices),
            bodies[i % len(bodies)],
        )
        for i in range(n)
    ]


def _plain_rows(envs: list[Envelope]) -> Rows:
    return [
        {
            "device_id": e.device,
            "seq": e.seq,
            "kind": e.kind,
            "ts": datetime.fromtimestamp(e.ts, timezone.utc),
            "received_at": datetime.now(timezone.utc),
            "body": e.body,
        }
        for e in envs
    ]


def _ingest_rates(url: str, envs: list[Envelope], n_devices: int) -> dict[str, float]:
    from sqlalchemy import insert

    from fleet_server.db import Database
    from fleet_server.ingest import ingest
    from fleet_server.tables import Device, Telemetry

    db = Database(url)
    db.migrate()
    with db.begin() as session:
        session.add_all(Device(id=f"bench-dev-{i:04d}") for i in range(n_devices))
    batches = [envs[i : i + INGEST_BATCH] for i in range(0, len(envs), INGEST_BATCH)]
    # Baseline: the same rows under other sequence numbers, a plain executemany INSERT
    # (no ON CONFLICT, no RETURNING, no device updates), one transaction per batch.
    shifted = [[replace(e, seq=e.seq + 10**9) for e in b] for b in batches]
    t0 = time.perf_counter()
    for b in shifted:
        with db.begin() as session:
            session.execute(insert(Telemetry), _plain_rows(b))
    plain = len(envs) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for b in batches:
        with db.begin() as session:
            acks = ingest(session, b)
            assert sum(len(v) for v in acks.values()) == len(b)
    ours = len(envs) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for b in batches:  # every one a duplicate: acked again, stored once
        with db.begin() as session:
            ingest(session, b)
    again = len(envs) / (time.perf_counter() - t0)
    with db.session() as session:
        from sqlalchemy import func, select

        stored = session.scalar(select(func.count()).select_from(Telemetry))
    assert stored == 2 * len(envs), stored
    db.engine.dispose()
    return {"ingest": ours, "plain": plain, "redelivery": again}


def _end_to_end(work: Path, url: str, envs: list[Envelope], n_devices: int) -> float:
    """Publish with paho to edgefleet/devices/<id>/up; time until every row is stored."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from sqlalchemy import func, select

    from fleet_server.cli import initialize
    from fleet_server.db import Database
    from fleet_server.local_fleet import ServerThread, free_port
    from fleet_server.settings import Settings
    from fleet_server.tables import Device, Telemetry
    from tests.support.mosquitto import start_mosquitto

    data_dir = work / "server"
    initialize(data_dir, url, print_token=False)
    db = Database(url or f"sqlite:///{data_dir / 'fleet.db'}")
    with db.begin() as session:
        session.add_all(Device(id=f"bench-dev-{i:04d}") for i in range(n_devices))
    broker = start_mosquitto(work / "mosquitto")
    server = ServerThread(
        Settings.load(data_dir, port=free_port(), db_url=url, mqtt_url=broker.url)
    )
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-publisher")
    try:
        server.start()
        pub.max_inflight_messages_set(100)
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        payloads = [(f"edgefleet/devices/{e.device}/up", e.to_bytes()) for e in envs]
        t0 = time.perf_counter()
        for topic, data in payloads:
            pub.publish(topic, data, qos=1)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            with db.session() as session:
                n = session.scalar(select(func.count()).select_from(Telemetry))
            if n == len(envs):
                break
            time.sleep(0.05)
        else:
            raise RuntimeError(f"only {n} of {len(envs)} rows stored")
        return len(envs) / (time.perf_counter() - t0)
    finally:
        pub.loop_stop()
        pub.disconnect()
        server.stop()
        broker.stop()
        db.engine.dispose()


def bench_server_ingest(work: Path, quick: bool) -> Rows:
    n_devices = 200 if quick else 1000
    n = 5000 if quick else 30000
    envs = _summary_envelopes(n, n_devices)
    size = sum(len(e.to_bytes()) for e in envs[:50]) // 50
    rows: Rows = []
    with _postgres_db() as pg:
        backends = [("sqlite", f"sqlite:///{work / 'ingest.db'}")]
        if pg is not None:
            backends.append(("postgresql", pg))
        for name, url in backends:
            r = _ingest_rates(url, envs, n_devices)
            rows.append(
                {
                    "measure": f"ingest() {name}, batches of {INGEST_BATCH}, {n_devices} devices",
                    "per_s": r["ingest"],
                    "baseline": "plain executemany INSERT",
                    "baseline_per_s": r["plain"],
                    "ratio": r["ingest"] / r["plain"],
                    "envelope_bytes": size,
                    **({"goal_ok": r["ingest"] >= 5000} if name == "postgresql" else {}),
                }
            )
            rows.append(
                {
                    "measure": f"ingest() {name}, all duplicates (redelivery)",
                    "per_s": r["redelivery"],
                    "baseline": "ingest() first delivery",
                    "baseline_per_s": r["ingest"],
                    "ratio": r["redelivery"] / r["ingest"],
                }
            )
    with _postgres_db() as pg:  # a fresh database again: initialize() makes the schema
        e2e_n = min(n, 10000)
        rate = _end_to_end(work / "e2e", pg or "", envs[:e2e_n], n_devices)
        direct = rows[-2]["per_s"]
        rows.append(
            {
                "measure": f"end to end: paho -> Mosquitto -> server -> "
                f"{'postgresql' if pg else 'sqlite'}, {e2e_n} envelopes",
                "per_s": rate,
                "baseline": "ingest() direct, same database",
                "baseline_per_s": direct,
                "ratio": rate / direct,
            }
        )
    return rows


SECTIONS: dict[str, Callable[[Path, bool], Rows]] = {
    "outbox": bench_outbox,
    "observe": bench_observe,
    "bytes": bench_bytes,
    "server_ingest": bench_server_ingest,
}


def _print(rows: Rows) -> None:
    for r in rows:
        parts = []
        for k, v in r.items():
            if isinstance(v, float):
                v = f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}"
            elif isinstance(v, int) and not isinstance(v, bool):
                v = f"{v:,}"
            parts.append(f"{k}={v}")
        print("  " + "  ".join(parts))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default=",".join(SECTIONS))
    ap.add_argument("--dir", type=Path, default=None, help="where the outbox files go")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="edgefleet-bench-", dir=args.dir))
    results: dict[str, Rows] = {}
    try:
        for name in args.only.split(","):
            results[name] = SECTIONS[name](work, args.quick)
            if not args.json:
                print(f"[{name}]")
                _print(results[name])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
