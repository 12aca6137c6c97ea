"""Device health for the heartbeat: process CPU and memory, system load, memory and disk,
inference latency and counts. Standard library only (reads /proc on Linux; elsewhere the
fields it cannot read are None)."""

from __future__ import annotations

import bisect
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

# Latency buckets: upper bounds 25 us * 2**i, i = 0..19 (25 us .. 13.1 s), then overflow.
# Fixed and log-spaced so that every device's histograms add up on the server.
LATENCY_SCHEME = "log2:25us:20"
LATENCY_BOUNDS_S: tuple[float, ...] = tuple(25e-6 * 2**i for i in range(20))

_cpu_lock = threading.Lock()
_cpu_last: tuple[float, float] = (time.monotonic(), sum(os.times()[:2]))


def collect_health(data_dir: Path) -> dict[str, Any]:
    """One health sample. ``cpu_percent`` is this process's CPU time since the last call
    (or since import) over wall time, in percent of one core."""
    global _cpu_last
    now, cpu = time.monotonic(), sum(os.times()[:2])
    with _cpu_lock:
        last_wall, last_cpu = _cpu_last
        _cpu_last = (now, cpu)
    wall = now - last_wall
    try:
        load: list[float] | None = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    status = _proc_kv(Path("/proc/self/status"))
    meminfo = _proc_kv(Path("/proc/meminfo"))
    disk_free: int | None = None
    disk_total: int | None = None
    try:
        disk = shutil.disk_usage(data_dir)
        disk_free, disk_total = int(disk.free), int(disk.total)
    except OSError:
        pass
    return {
        "cpu_percent": round(100.0 * (cpu - last_cpu) / wall, 1) if wall > 0 else None,
        "load": load,
        "rss_bytes": status.get("VmRSS"),
        "rss_peak_bytes": status.get("VmHWM"),
        "mem_total_bytes": meminfo.get("MemTotal"),
        "mem_available_bytes": meminfo.get("MemAvailable"),
        "disk_free_bytes": disk_free,
        "disk_total_bytes": disk_total,
    }


def _proc_kv(path: Path) -> dict[str, int]:
    """``Key:   123 kB`` lines of a /proc file, in bytes; empty where there is no /proc."""
    out: dict[str, int] = {}
    try:
        text = path.read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if len(parts) == 2 and parts[1] == "kB" and parts[0].isdigit():
            out[key] = int(parts[0]) * 1024
    return out


class LatencyHistogram:
    """Thread-safe fixed-bucket latency histogram (see ``LATENCY_BOUNDS_S``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = [0] * (len(LATENCY_BOUNDS_S) + 1)
        self._n = 0
        self._sum = 0.0
        self._max = 0.0

    def record(self, seconds: float) -> None:
        i = bisect.bisect_left(LATENCY_BOUNDS_S, seconds)  # bucket i: v <= bounds[i]
        with self._lock:
            self._counts[i] += 1
            self._n += 1
            self._sum += seconds
            if seconds > self._max:
                self._max = seconds

    def snapshot_and_reset(self) -> dict[str, Any]:
        """``counts`` per bucket (trailing zeros left off), n, sum and max in seconds."""
        with self._lock:
            counts, n, total, peak = self._counts, self._n, self._sum, self._max
            self._counts = [0] * (len(LATENCY_BOUNDS_S) + 1)
            self._n, self._sum, self._max = 0, 0.0, 0.0
        while counts and counts[-1] == 0:
            counts.pop()
        return {
            "scheme": LATENCY_SCHEME,
            "counts": counts,
            "n": n,
            "sum_s": round(total, 6),
            "max_s": round(peak, 6),
        }


def latency_quantile(snapshot: dict[str, Any], q: float) -> float | None:
    """Upper bucket bound holding quantile ``q`` of a snapshot (None when empty)."""
    counts = list(snapshot.get("counts") or [])
    n = sum(counts)
    if n == 0:
        return None
    target, seen = q * n, 0
    for i, c in enumerate(counts):
        seen += c
        if seen >= target:
            return LATENCY_BOUNDS_S[i] if i < len(LATENCY_BOUNDS_S) else float("inf")
    return float("inf")


class InferenceCounters:
    """Thread-safe inference and error counts per model, reset on snapshot."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, list[int]] = {}

    def record(self, model: str, *, ok: bool = True, rows: int = 1) -> None:
        with self._lock:
            c = self._counts.setdefault(model, [0, 0, 0])
            c[0] += 1
            c[1] += rows
            if not ok:
                c[2] += 1

    def snapshot_and_reset(self) -> dict[str, dict[str, int]]:
        """{model: {"requests": n, "rows": n, "errors": n}}."""
        with self._lock:
            counts, self._counts = self._counts, {}
        return {m: {"requests": c[0], "rows": c[1], "errors": c[2]} for m, c in counts.items()}
