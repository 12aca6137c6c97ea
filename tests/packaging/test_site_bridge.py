"""The site broker bridge (packaging/mosquitto/bridge.conf.template) between two real
Mosquittos: artifacts come in once and are served from the site, uplinks go out, the
probe barrier stays local. Plain TCP on loopback: the template's TLS lines are dropped
(mTLS is the central broker's production configuration, tested with it)."""

from __future__ import annotations

import queue
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.support.mosquitto import Mosquitto, start_mosquitto

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "packaging" / "mosquitto" / "bridge.conf.template"

pytestmark = pytest.mark.skipif(
    shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists(),
    reason="mosquitto is not installed (apt-get install -y mosquitto)",
)


def render(central_port: int) -> str:
    text = (
        TEMPLATE.read_text()
        .replace("@SITE@", "test-site")
        .replace("@CENTRAL_HOST@", "127.0.0.1")
        .replace("@CENTRAL_PORT@", str(central_port))
    )
    tls = ("bridge_cafile", "bridge_certfile", "bridge_keyfile", "bridge_insecure")
    return "\n".join(ln for ln in text.splitlines() if not ln.startswith(tls)) + "\n"


class Client:
    """A small synchronous MQTT 3.1.1 client that records what it receives."""

    def __init__(self, port: int, name: str) -> None:
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.seen: list[mqtt.MQTTMessage] = []
        self._subacks: queue.Queue[int] = queue.Queue()
        self._c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"{name}-{secrets.token_hex(3)}",
            protocol=mqtt.MQTTv311,
        )
        self._c.on_message = lambda _c, _u, msg: self.messages.put(msg)
        self._c.on_subscribe = lambda _c, _u, mid, _rc, _p: self._subacks.put(mid)
        self._c.connect("127.0.0.1", port)
        self._c.loop_start()

    def subscribe(self, topic: str) -> None:
        _, mid = self._c.subscribe(topic, qos=1)
        got = self._subacks.get(timeout=10)
        assert got == mid

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self._c.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def _drain(self) -> None:
        while not self.messages.empty():
            self.seen.append(self.messages.get_nowait())

    def expect(self, topic: str, payload: bytes, timeout: float = 10.0) -> mqtt.MQTTMessage:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._drain()
            for msg in self.seen:
                if msg.topic == topic and msg.payload == payload:
                    return msg
            time.sleep(0.02)
        raise AssertionError(f"{topic} never arrived")

    def nothing_on(self, topic: str, wait: float = 1.0) -> None:
        time.sleep(wait)
        self._drain()
        assert all(m.topic != topic for m in self.seen), f"{topic} was bridged"

    def close(self) -> None:
        self._c.loop_stop()
        self._c.disconnect()


@pytest.fixture
def brokers(tmp_path: Path) -> Iterator[tuple[Mosquitto, Mosquitto]]:
    central = start_mosquitto(tmp_path / "central")
    site = start_mosquitto(tmp_path / "site", extra=render(central.port))
    try:
        yield central, site
    finally:
        site.stop()
        central.stop()


def _wait_bridge_up(site: Mosquitto) -> None:
    watcher = Client(site.port, "watch")
    try:
        watcher.subscribe("$SYS/broker/connection/edgefleet-bridge-test-site/state")
        watcher.expect("$SYS/broker/connection/edgefleet-bridge-test-site/state", b"1")
    finally:
        watcher.close()


def test_model_crosses_the_bridge_once_and_site_serves_it_after_central_is_gone(
    brokers: tuple[Mosquitto, Mosquitto],
) -> None:
    central, site = brokers
    _wait_bridge_up(site)
    publisher = Client(central.port, "server")
    chunk = secrets.token_bytes(256 * 1024)
    chunk_topic = "edgefleet/chunks/" + "ab" * 32
    # Published while the bridge is up: the site must still store them as retained.
    publisher.publish("edgefleet/tuf/metadata/timestamp.json", b'{"v": 7}', retain=True)
    publisher.publish(chunk_topic, chunk, retain=True)
    publisher.publish("edgefleet/devices/dev-1/notify", b'{"targets_version": 7}', retain=True)
    time.sleep(1.0)  # let the bridge deliver
    publisher.close()
    central.stop()  # from here on, only the site's own store can answer

    agents = [Client(site.port, f"agent-{i}") for i in range(3)]
    try:
        for agent in agents:
            agent.subscribe("edgefleet/tuf/#")
            agent.subscribe("edgefleet/chunks/#")
            msg = agent.expect(chunk_topic, chunk)
            assert msg.retain, "the site broker did not keep the chunk as retained"
            agent.expect("edgefleet/tuf/metadata/timestamp.json", b'{"v": 7}')
    finally:
        for agent in agents:
            agent.close()


def test_uplinks_go_out_acks_come_in_and_the_probe_stays_on_site(
    brokers: tuple[Mosquitto, Mosquitto],
) -> None:
    central, site = brokers
    _wait_bridge_up(site)
    server = Client(central.port, "server")
    agent = Client(site.port, "agent")
    try:
        server.subscribe("edgefleet/devices/+/up")
        server.subscribe("edgefleet/devices/+/probe")
        agent.subscribe("edgefleet/devices/dev-1/ack")
        agent.subscribe("edgefleet/devices/dev-1/probe")

        agent.publish("edgefleet/devices/dev-1/up", b'{"seq": 1}')
        server.expect("edgefleet/devices/dev-1/up", b'{"seq": 1}')
        server.publish("edgefleet/devices/dev-1/ack", b'{"seqs": [1]}')
        agent.expect("edgefleet/devices/dev-1/ack", b'{"seqs": [1]}')

        # The barrier token loops back on the site and never reaches the centre.
        agent.publish("edgefleet/devices/dev-1/probe", b"token")
        agent.expect("edgefleet/devices/dev-1/probe", b"token")
        server.nothing_on("edgefleet/devices/dev-1/probe")
    finally:
        agent.close()
        server.close()
