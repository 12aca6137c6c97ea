"""One real fleet for the module: Mosquitto, a fleet server on it, one agent process.

Each test publishes new model versions (distinct bytes), attacks, and leaves the repository
and the broker as it found them, so the tests do not depend on their order.
"""

from __future__ import annotations

import io
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent import protocol
from fleet_server.client import FleetClient
from fleet_server.local_fleet import AgentProcess
from tests.support.fleet import RunningServer, running_server
from tests.support.mosquitto import Mosquitto, start_mosquitto

DEVICE = "dev-1"
MODEL = "cancer"


class Attacker:
    """Anyone who can write to the broker: retained writes to any topic, and a spy."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("mqtt://").split(":")
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"mallory-{os.getpid()}")
        self.connected = threading.Event()
        self.client.on_connect = lambda *a: self.connected.set()
        self.client.on_message = self._on_message
        self.client.connect(host, int(port))
        self.client.loop_start()
        assert self.connected.wait(5)
        self.seen: dict[str, list[bytes]] = {}
        self._lock = threading.Lock()

    def _on_message(self, client: object, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.seen.setdefault(msg.topic, []).append(bytes(msg.payload))

    def publish(self, topic: str, payload: bytes, retain: bool = True) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(10)
        assert info.is_published()

    def spy(self, topic: str) -> None:
        self.client.subscribe(topic, qos=1)
        time.sleep(0.2)

    def count(self, topic: str) -> int:
        with self._lock:
            return len(self.seen.get(topic, []))

    def nudge(self, device: str = DEVICE) -> None:
        """The unsigned hint that makes the agent run an update cycle now."""
        self.publish(protocol.device_topic(device, "notify"), b'{"v":1,"targets_version":0}')

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class Fleet:
    tmp: Path
    broker: Mosquitto
    server: RunningServer
    agent: AgentProcess
    attacker: Attacker
    data: tuple[Any, ...]
    versions: list[int] = field(default_factory=list)

    @property
    def client(self) -> FleetClient:
        return self.server.client

    @property
    def services(self) -> Any:
        return self.server.server.app.state.services

    def publish_new(self) -> int:
        """Publish a model version whose bytes differ from every earlier one."""
        import skops.io as sio
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        x, y, sample = self.data
        c = 0.05 * (len(self.versions) + 1)
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000))
        model.fit(x[:400], y[:400])
        body = self.client.publish(
            MODEL, bytes(sio.dumps(model)), sample=sample, filename="m.skops"
        )
        self.versions.append(int(body["version"]))
        return int(body["version"])

    def deploy(self, version: int) -> str:
        return str(self.client.deploy(MODEL, version, devices=[DEVICE])["id"])

    def device_status(self, dep_id: str) -> dict[str, Any]:
        dep = self.client.deployment(dep_id)
        row: dict[str, Any] = dep["devices"][0]
        return row

    def serving(self) -> int:
        """The version the agent answers inference with."""
        x = self.data[0]
        return int(self.agent.infer(MODEL, x[400:402].tolist())["model_version"])

    def last_refusal(self, after_id: int = 0) -> dict[str, Any] | None:
        for a in self.client.alerts():
            if a["device_id"] == DEVICE and a["kind"] == "device_refusal" and a["id"] > after_id:
                return a
        return None

    def log_mark(self) -> int:
        return self.agent.log.stat().st_size

    def log_since(self, mark: int) -> str:
        with self.agent.log.open("rb") as f:
            f.seek(mark)
            return f.read().decode(errors="replace")


def wait_for(pred: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _data() -> tuple[Any, ...]:
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    x = x.astype(np.float32)
    buf = io.StringIO()
    header = ",".join(f"f{i}" for i in range(x.shape[1]))
    np.savetxt(buf, x[:200], delimiter=",", fmt="%.8g", header=header, comments="")
    return x, y, buf.getvalue().encode()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("trust_e2e")
    broker = start_mosquitto(tmp / "mosquitto")
    try:
        with running_server(tmp / "server", mqtt_url=broker.url) as server:
            agent = AgentProcess(
                tmp / "agent",
                env={"EDGE_AGENT_HEARTBEAT_S": "1", "EDGE_AGENT_FETCH_TIMEOUT_S": "5"},
            )
            agent.enroll(server.url, server.client.enrollment_token(), DEVICE)
            agent.start()
            attacker = Attacker(broker.url)
            f = Fleet(tmp, broker, server, agent, attacker, _data())
            try:
                v1 = f.publish_new()
                dep = f.deploy(v1)
                wait_for(lambda: f.device_status(dep)["status"] == "active", what="v1 active")
                yield f
            finally:
                attacker.close()
                agent.stop()
    finally:
        broker.stop()
