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

The server ingest rate belongs in a ``server_ingest`` section added by whoever builds
ingestion (append a function to ``SECTIONS``).

    .venv/bin/python -m bench.telemetry [--only outbox,observe,bytes] [--dir DIR] [--quick]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import tempfile
import time
import zlib
from collections.abc import Callable
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


SECTIONS: dict[str, Callable[[Path, bool], Rows]] = {
    "outbox": bench_outbox,
    "observe": bench_observe,
    "bytes": bench_bytes,
    # "server_ingest": added with the server's ingestion (fleet_server.ingest).
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
