"""Health sampling from /proc and the latency histogram."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest

from edge_agent.health import (
    LATENCY_BOUNDS_S,
    InferenceCounters,
    LatencyHistogram,
    collect_health,
    latency_quantile,
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_health_reports_this_process_and_the_data_disk(tmp_path: Path) -> None:
    collect_health(tmp_path)
    end = time.process_time() + 0.2
    while time.process_time() < end:  # burn CPU so the next sample sees it
        pass
    h = collect_health(tmp_path)
    assert h["cpu_percent"] is not None and h["cpu_percent"] > 20
    assert 1 << 20 < h["rss_bytes"] < h["mem_total_bytes"]
    assert h["rss_peak_bytes"] >= h["rss_bytes"]
    assert 0 < h["mem_available_bytes"] <= h["mem_total_bytes"]
    assert 0 < h["disk_free_bytes"] <= h["disk_total_bytes"]
    assert len(h["load"]) == 3


def test_a_missing_data_dir_does_not_break_the_heartbeat(tmp_path: Path) -> None:
    h = collect_health(tmp_path / "gone")
    assert h["disk_free_bytes"] is None


def test_latency_histogram_buckets_counts_and_resets_under_threads() -> None:
    hist = LatencyHistogram()

    def work() -> None:
        for v in (10e-6, 25e-6, 30e-6, 1e-3, 0.5, 60.0):
            for _ in range(100):
                hist.record(v)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    snap = hist.snapshot_and_reset()
    assert snap["n"] == 2400 and sum(snap["counts"]) == 2400
    assert snap["counts"][0] == 800  # 10 us and 25 us (bounds are inclusive)
    assert snap["counts"][1] == 400  # 30 us
    assert snap["counts"][len(LATENCY_BOUNDS_S)] == 400  # 60 s overflows
    assert snap["max_s"] == 60.0
    assert latency_quantile(snap, 0.5) == LATENCY_BOUNDS_S[1]  # 1200th of 2400: 30 us
    assert latency_quantile(snap, 0.6) == LATENCY_BOUNDS_S[6]  # 1 ms <= 1.6 ms
    assert hist.snapshot_and_reset()["counts"] == []
    assert latency_quantile(hist.snapshot_and_reset(), 0.5) is None


def test_inference_counters_per_model() -> None:
    c = InferenceCounters()
    c.record("iris", rows=3)
    c.record("iris", ok=False)
    c.record("wine")
    assert c.snapshot_and_reset() == {
        "iris": {"requests": 2, "rows": 4, "errors": 1},
        "wine": {"requests": 1, "rows": 1, "errors": 0},
    }
    assert c.snapshot_and_reset() == {}
