"""Two server replicas share ingestion through an MQTT 5 shared subscription on one
PostgreSQL database: every uplink is stored once, nothing is lost, each is acked once."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import func, select

from edge_agent import protocol
from fleet_server.cli import initialize
from fleet_server.db import Database
from fleet_server.local_fleet import ServerThread, free_port
from fleet_server.services import FleetServices
from fleet_server.settings import Settings
from fleet_server.tables import Device, Telemetry
from tests.support.mosquitto import Mosquitto, start_mosquitto

DEVICES = [f"replica-dev-{i:02d}" for i in range(20)]
PER_DEVICE = 100
TOTAL = len(DEVICES) * PER_DEVICE


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    b = start_mosquitto(tmp_path / "mosquitto")
    yield b
    b.stop()


def _services(server: ServerThread) -> FleetServices:
    svc = server.app.state.services
    assert isinstance(svc, FleetServices)
    return svc


def _wait(cond: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_two_replicas_store_every_uplink_once(
    tmp_path: Path, postgres_url: str, broker: Mosquitto
) -> None:
    data_dir = tmp_path / "server"
    initialize(data_dir, postgres_url, print_token=False)
    db = Database(postgres_url)
    with db.begin() as session:
        session.add_all(Device(id=d) for d in DEVICES)

    acked: Counter[tuple[str, int]] = Counter()
    lock = threading.Lock()
    subscribed = threading.Event()

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        device = protocol.device_from_topic(msg.topic)
        seqs = protocol.Ack.from_bytes(bytes(msg.payload)).seqs
        with lock:
            acked.update((device, s) for s in seqs)

    with ExitStack() as stack:
        replicas = []
        for name in ("replica-a", "replica-b"):
            settings = Settings.load(
                data_dir,
                port=free_port(),
                db_url=postgres_url,
                mqtt_url=broker.url,
                mqtt_client_id=f"fleet-server-{name}",
                mqtt_shared_group="ingest",
            )
            server = ServerThread(settings)
            server.start()
            stack.callback(server.stop)
            replicas.append(_services(server))

        pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="replica-test-publisher")
        pub.max_inflight_messages_set(100)
        pub.on_message = on_message
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        stack.callback(pub.loop_stop)
        stack.callback(pub.disconnect)
        pub.on_subscribe = lambda *_: subscribed.set()
        pub.subscribe(f"{protocol.TOPIC_ROOT}/devices/+/ack", qos=1)
        assert subscribed.wait(10), "no SUBACK"  # acks sent before it would be missed

        now = time.time()
        infos = []
        for seq in range(1, PER_DEVICE + 1):
            for device in DEVICES:
                env = protocol.Envelope(
                    device, seq, "heartbeat", now + seq, {"state": "online", "n": seq}
                )
                infos.append(
                    pub.publish(protocol.device_topic(device, "up"), env.to_bytes(), qos=1)
                )
        for info in infos:
            info.wait_for_publish(timeout=30)

        def stored() -> int:
            with db.session() as session:
                return int(
                    session.scalar(
                        select(func.count())
                        .select_from(Telemetry)
                        .where(Telemetry.device_id.in_(DEVICES))
                    )
                    or 0
                )

        _wait(lambda: stored() >= TOTAL, 60, f"{TOTAL} telemetry rows")
        _wait(lambda: sum(r.ingested for r in replicas) >= TOTAL, 10, "the ingest counters")
        _wait(lambda: len(acked) >= TOTAL, 10, "the acks")
        time.sleep(0.5)  # late duplicates would show up here

        counts = [r.ingested for r in replicas]
        print(f"ingested per replica: {counts}")
        assert stored() == TOTAL
        assert all(c > 0 for c in counts), f"one replica ingested nothing: {counts}"
        # Each uplink reached exactly one replica: a double delivery would push the sum over.
        assert sum(counts) == TOTAL, counts
        expected = {(d, s) for d in DEVICES for s in range(1, PER_DEVICE + 1)}
        assert set(acked) == expected
        assert max(acked.values()) == 1, "an uplink was acknowledged twice"
    db.engine.dispose()
