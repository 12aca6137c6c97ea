"""Spots one device identity used from two places at once.

Every agent process sends a random ``instance`` id in its heartbeats. A restart brings a new
instance that never returns to the old one; two copies of one certificate alternate (and,
on Mosquitto with ``use_username_as_clientid``, keep kicking each other off), so an instance
that comes back after another one was heard is a duplicate.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict


class IdentityWatch:
    def __init__(self, window_s: float = 600.0, max_devices: int = 100_000) -> None:
        self.window_s = window_s
        self.max_devices = max_devices
        self._seen: OrderedDict[str, dict[str, float]] = OrderedDict()
        self._last: dict[str, str] = {}
        self._lock = threading.Lock()

    def observe(self, device_id: str, instance: str, now: float | None = None) -> bool:
        """Record a heartbeat; True when ``instance`` returns after another instance spoke."""
        now = time.monotonic() if now is None else now
        with self._lock:
            seen = self._seen.setdefault(device_id, {})
            self._seen.move_to_end(device_id)
            for inst in [i for i, t in seen.items() if now - t > self.window_s]:
                del seen[inst]
            returning = instance in seen and self._last.get(device_id) != instance
            seen[instance] = now
            self._last[device_id] = instance
            while len(self._seen) > self.max_devices:
                old, _ = self._seen.popitem(last=False)
                self._last.pop(old, None)
            return returning
