"""The durable outbox: crash safety, bounds, priorities, replay and acks."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edge_agent.exceptions import ProtocolError
from edge_agent.outbox import Outbox

ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import sys
from pathlib import Path
from edge_agent.outbox import Outbox

box = Outbox(Path(sys.argv[1]), "dev-1", max_bytes=50_000_000, max_age_s=1e9)
i = 0
while True:
    env = box.append("heartbeat", {"i": i, "pad": "x" * 200}, 0)
    if i % 25 == 24:
        box.pending(1)  # the sender's sync barrier
    sys.stdout.write(f"{env.seq}\\n")
    sys.stdout.flush()
    i += 1
"""


def _box(path: Path, **kw: object) -> Outbox:
    kw.setdefault("max_bytes", 1_000_000)
    kw.setdefault("max_age_s", 3600.0)
    return Outbox(path, "dev-1", **kw)  # type: ignore[arg-type]


def test_sigkill_of_an_appending_process_loses_nothing_it_committed(tmp_path: Path) -> None:
    db = tmp_path / "outbox.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(db)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None
    reported: list[int] = []
    for line in proc.stdout:
        reported.append(int(line))
        if len(reported) >= 400:
            os.kill(proc.pid, signal.SIGKILL)
            break
    reported.extend(int(line) for line in proc.stdout)  # printed before the kill landed
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL

    box = _box(db, max_bytes=50_000_000)
    stored = [e.seq for e in box.pending(100_000)]
    assert set(reported) <= set(stored)  # every append that returned survived
    assert len(stored) - len(reported) <= 1  # at most the one being committed
    assert stored == list(range(stored[0], stored[0] + len(stored)))  # no gaps, in order
    after = box.append("heartbeat", {"i": -1}, 0)
    assert after.seq > max(stored)  # strictly increasing across the crash


def test_sequence_numbers_keep_growing_after_everything_was_acked(tmp_path: Path) -> None:
    box = _box(tmp_path / "o.db")
    seqs = [box.append("heartbeat", {"i": i}, 0).seq for i in range(5)]
    box.ack(seqs)
    box.close()
    box = _box(tmp_path / "o.db")
    assert box.stats().depth == 0
    assert box.append("heartbeat", {}, 0).seq == seqs[-1] + 1


def test_replay_after_restart_is_in_sequence_order_and_ack_deletes(tmp_path: Path) -> None:
    box = _box(tmp_path / "o.db")
    kinds = ["heartbeat", "deployment", "summary", "alert", "heartbeat", "deployment"]
    sent = [
        box.append(k, {"n": i}, 10 if k in ("deployment", "alert") else 0)
        for i, k in enumerate(kinds)
    ]
    box.close()
    box = _box(tmp_path / "o.db")
    replay = box.pending(100)
    assert [e.seq for e in replay] == [e.seq for e in sent]
    assert [(e.kind, e.body) for e in replay] == [(e.kind, e.body) for e in sent]
    assert replay[0].to_bytes() == sent[0].to_bytes()
    assert box.ack([sent[1].seq, sent[3].seq, 10**15]) == 2  # unknown seqs are ignored
    assert [e.seq for e in box.pending(100)] == [sent[i].seq for i in (0, 2, 4, 5)]
    assert [e.seq for e in box.pending(2)] == [sent[0].seq, sent[2].seq]
    box.ack([e.seq for e in box.pending(100)])
    assert box.stats().depth == 0 and box.stats().bytes == 0


def test_when_full_the_oldest_lowest_priority_records_go_first_and_are_counted(
    tmp_path: Path,
) -> None:
    probe = _box(tmp_path / "probe.db")
    size = len(probe.append("heartbeat", {"n": 0, "pad": "x" * 100}, 0).to_bytes())
    box = _box(tmp_path / "o.db", max_bytes=size * 10 + 5)
    reports = [box.append("deployment", {"n": i, "pad": "x" * 97}, 10) for i in range(3)]
    routine = [box.append("heartbeat", {"n": i, "pad": "x" * 100}, 0) for i in range(7)]
    assert box.stats().dropped_by_kind == {}
    more = [box.append("summary", {"n": i, "pad": "x" * 102}, 0) for i in range(3)]
    left = [e.seq for e in box.pending(100)]
    # The three oldest heartbeats made room; reports and the newest records stayed.
    assert left == [e.seq for e in reports + routine[3:] + more]
    assert box.stats().dropped_by_kind == {"heartbeat": 3}
    assert box.stats().bytes <= box.max_bytes
    # Full of reports only: a new routine record is the one that goes.
    box.ack([e.seq for e in routine + more])
    for i in range(10):
        box.append("alert", {"n": i, "pad": "x" * 102}, 10)
    box.append("heartbeat", {"n": 99, "pad": "x" * 100}, 0)
    assert box.stats().dropped_by_kind["heartbeat"] == 4
    assert all(e.kind in ("deployment", "alert") for e in box.pending(100))
    box.close()
    assert (
        _box(tmp_path / "o.db", max_bytes=size * 10 + 5).stats().dropped_by_kind["heartbeat"] == 4
    )  # drop counts survive a restart


def test_records_older_than_max_age_expire_and_are_counted(tmp_path: Path) -> None:
    now = [1000.0]
    box = _box(tmp_path / "o.db", max_age_s=60.0, clock=lambda: now[0])
    box.append("heartbeat", {}, 0)
    box.append("deployment", {}, 10)
    now[0] += 30
    kept = box.append("summary", {}, 0)
    now[0] += 45  # the first two are now 75 s old
    last = box.append("heartbeat", {}, 0)
    assert [e.seq for e in box.pending(10)] == [kept.seq, last.seq]
    assert box.stats().dropped_by_kind == {"deployment": 1, "heartbeat": 1}


def test_an_oversized_record_is_refused_before_it_is_stored(tmp_path: Path) -> None:
    box = _box(tmp_path / "o.db", max_record_bytes=1024)
    with pytest.raises(ProtocolError, match="exceeds"):
        box.append("summary", {"blob": "x" * 2000}, 0)
    with pytest.raises(ProtocolError, match="unknown envelope kind"):
        box.append("rows", {}, 0)
    assert box.stats().depth == 0
    assert box.append("summary", {"ok": 1}, 0).seq == box.last_seq


def test_concurrent_appends_get_unique_increasing_seqs(tmp_path: Path) -> None:
    box = _box(tmp_path / "o.db", synchronous="FULL")
    got: dict[int, list[int]] = {}

    def work(t: int) -> None:
        got[t] = [box.append("heartbeat", {"t": t}, 0).seq for _ in range(100)]

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    every = [s for seqs in got.values() for s in seqs]
    assert len(set(every)) == 400
    assert all(a < b for seqs in got.values() for a, b in itertools.pairwise(seqs))
    assert [e.seq for e in box.pending(1000)] == sorted(every)


def test_a_corrupt_outbox_is_moved_aside_and_numbering_does_not_restart(tmp_path: Path) -> None:
    db = tmp_path / "o.db"
    box = _box(db)
    old = box.append("heartbeat", {}, 0).seq
    box.close()
    for p in tmp_path.glob("o.db*"):
        p.unlink()
    db.write_bytes(b"this is not a sqlite database" * 100)
    time.sleep(0.01)
    box = _box(db)
    assert list(tmp_path.glob("o.db.corrupt-*"))
    assert box.append("heartbeat", {}, 0).seq > old  # the clock floor: no reuse


def test_records_handed_to_the_sender_are_already_in_the_main_database_file(
    tmp_path: Path,
) -> None:
    # pending() checkpoints (fsyncs) the WAL before returning records, so a power loss
    # after a send cannot take a sent record back and let its seq be reused.
    box = _box(tmp_path / "o.db")
    sent = [box.append("heartbeat", {"i": i}, 0).seq for i in range(20)]
    assert [e.seq for e in box.pending(100)] == sent
    copy = tmp_path / "copy" / "o.db"
    copy.parent.mkdir()
    copy.write_bytes((tmp_path / "o.db").read_bytes())  # the main file alone, no WAL
    assert [e.seq for e in _box(copy).pending(100)] == sent
