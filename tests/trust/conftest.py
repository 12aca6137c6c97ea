"""A TUF repository publishing to a real Mosquitto, and an agent verifying over MQTT."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent import protocol
from edge_agent.mqtt_fetcher import MqttFetcher
from edge_agent.mqtt_link import MqttLink
from edge_agent.trust import TrustClient, TrustCycle
from fleet_server.tuf_repo import TufRepository
from tests.support.mosquitto import Mosquitto

DEVICE = "dev-1"


class PahoPublisher:
    """The repository's Publisher in tests (and the attacker's pen: any retained write)."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("mqtt://").split(":")
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{os.getpid()}")
        self.client.max_inflight_messages_set(100)
        self.connected = threading.Event()
        self.client.on_connect = lambda *a: self.connected.set()
        self.client.connect(host, int(port))
        self.client.loop_start()
        assert self.connected.wait(5)
        self.published: list[str] = []

    def publish(self, topic: str, payload: bytes, *, retain: bool = True) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(10)
        assert info.is_published()
        self.published.append(topic)

    def unpublish(self, topic: str) -> None:
        self.publish(topic, b"", retain=True)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class Env:
    tmp: Path
    broker: Mosquitto
    pub: PahoPublisher
    repo: TufRepository
    link: MqttLink
    timeout: float = 5.0
    fetchers: list[MqttFetcher] = field(default_factory=list)

    @property
    def agent_dir(self) -> Path:
        return self.tmp / "agent"

    def client(self, **kw: object) -> TrustClient:
        def factory() -> MqttFetcher:
            f = MqttFetcher(self.link, DEVICE, timeout=self.timeout)
            self.fetchers.append(f)
            return f

        return TrustClient(
            self.agent_dir / "tuf" / "metadata",
            self.agent_dir / "tuf" / "targets",
            factory,
            **kw,  # type: ignore[arg-type]
        )

    def cycle(self) -> TrustCycle:
        return self.client().cycle()

    def publish_model(
        self, name: str, version: int, data: bytes, custom: dict[str, object] | None = None
    ) -> protocol.ModelPackage:
        model_target = protocol.model_target_path(name, version)
        package = protocol.ModelPackage(
            name=name,
            version=version,
            model_target=model_target,
            model_sha256=hashlib.sha256(data).hexdigest(),
            inputs=(protocol.TensorSpec("x", "FP32", (-1, 4)),),
            outputs=(protocol.TensorSpec("y", "INT64", (-1,)),),
            opset=17,
            ort_min="1.10.0",
        )
        path = protocol.package_target_path(name, version)
        self.repo.add_targets(
            {model_target: data, path: package.to_bytes()},
            custom={model_target: {"ort_min": "1.10.0", "opset": 17, **(custom or {})}},
        )
        return package

    def assign(self, serial: int, *packages: protocol.ModelPackage, device: str = DEVICE) -> None:
        a = protocol.Assignment(
            device,
            serial,
            tuple(
                protocol.AssignedModel(
                    p.name, p.version, protocol.package_target_path(p.name, p.version), "d1"
                )
                for p in packages
            ),
        )
        self.repo.add_targets({protocol.assignment_target_path(device): a.to_bytes()})

    def md_topic(self, name: str) -> str:
        return protocol.TUF_METADATA_PREFIX + name

    def files_outside_targets(self) -> list[Path]:
        targets = self.agent_dir / "tuf" / "targets"
        return [
            p
            for p in self.tmp.rglob("*")
            if p.is_file()
            and targets not in p.parents
            and "agent" in p.parts
            and "metadata" not in p.parts
            and "partial" not in p.parts
        ]


@pytest.fixture
def env(tmp_path: Path, mosquitto: Mosquitto) -> Iterator[Env]:
    pub = PahoPublisher(mosquitto.url)
    repo = TufRepository.create(
        tmp_path / "repo",
        offline_root_key_path=tmp_path / "offline" / "root.pem",
        bin_bits=4,
        publisher=pub,
    )
    link = MqttLink(mosquitto.url, DEVICE)
    link.start()
    assert link.connected.wait(5)
    e = Env(tmp_path, mosquitto, pub, repo, link)
    TrustClient.install_root(e.agent_dir / "tuf" / "metadata", repo.root_bytes())
    yield e
    link.stop()
    pub.close()


def wait_until(cond: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False
