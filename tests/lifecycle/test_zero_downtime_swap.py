"""Several threads hammer the agent's local API while a real v1 -> v2 deployment arrives
over MQTT (the embedded broker): no request fails, and every thread sees v1, then v2."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lifecycle.conftest import Pipeline
from tests.lifecycle.support import Device, deploy_and_wait, device_status, wait_for
from tests.support.fleet import RunningServer

MODEL = "swap"
THREADS = 4


class Hammer(threading.Thread):
    """Keep-alive POST /v2/models/{name}/infer in a loop; records versions and failures."""

    def __init__(self, port: int, body: bytes, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.port, self.body, self.stop = port, body, stop
        self.versions: list[str] = []
        self.failures: list[str] = []

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        while not self.stop.is_set():
            try:
                conn.request(
                    "POST", f"/v2/models/{MODEL}/infer", self.body,
                    {"Content-Type": "application/json"},
                )  # fmt: skip
                resp = conn.getresponse()
                data = resp.read()
                if resp.status != 200:
                    self.failures.append(f"{resp.status}: {data[:200]!r}")
                    continue
                self.versions.append(json.loads(data)["model_version"])
            except (OSError, http.client.HTTPException, ValueError) as e:
                self.failures.append(repr(e))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        conn.close()


@pytest.fixture
def device(embedded_fleet: RunningServer, tmp_path: Path) -> Iterator[Device]:
    dev = Device.enroll(embedded_fleet, tmp_path, "swapper")
    dev.start()
    yield dev
    dev.stop()


def test_requests_during_a_real_deployment_never_fail_and_switch_once(
    embedded_fleet: RunningServer, pipeline: Pipeline, device: Device
) -> None:
    client = embedded_fleet.client
    for expected in (1, 2):
        assert client.publish(MODEL, pipeline.model, sample=pipeline.sample)["version"] == expected
    assert deploy_and_wait(client, MODEL, 1, device.device_id)["status"] == "active"
    assert device.process is not None
    body = json.dumps(
        {
            "inputs": [
                {"name": "input", "shape": [1, 30], "datatype": "FP32", "data": pipeline.row[0]}
            ]
        }
    ).encode()
    stop = threading.Event()
    hammers = [Hammer(device.process.api_port, body, stop) for _ in range(THREADS)]
    for h in hammers:
        h.start()
    try:
        wait_for(lambda: all(len(h.versions) > 50 for h in hammers), 30, "requests on v1")
        dep = client.deploy(MODEL, 2, devices=[device.device_id])
        status = device_status(client, dep["id"], device.device_id, 90, device)
        assert status["status"] == "active", status
        seen = [len(h.versions) for h in hammers]
        wait_for(
            lambda: all(len(h.versions) > n + 50 for h, n in zip(hammers, seen, strict=True)),
            30,
            "requests on v2",
        )
    finally:
        stop.set()
        for h in hammers:
            h.join(15)
    for h in hammers:
        assert h.failures == [], h.failures[:5]
        # every answer names its version; v1 answers, then v2, and never v1 again
        switch = h.versions.index("2")
        assert switch > 0 and set(h.versions[:switch]) == {"1"}
        assert set(h.versions[switch:]) == {"2"}
    total = sum(len(h.versions) for h in hammers)
    print(f"\n{total} requests from {THREADS} threads across the swap, 0 failed")
