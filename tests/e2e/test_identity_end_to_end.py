"""Device identity end to end: enrollment over mTLS to a locked-down Mosquitto, revocation
through the API cutting the device off, and one identity used twice raising an alert."""

from __future__ import annotations

import getpass
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent import protocol
from fleet_server.cli import initialize, write_broker_config
from fleet_server.client import FleetClient
from fleet_server.local_fleet import AgentProcess, ServerThread, free_port
from fleet_server.settings import Settings
from tests.support.fleet import breast_cancer_pipeline, running_server

pytestmark = pytest.mark.slow


def _wait(predicate, timeout: float = 60.0, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def secure_fleet(tmp_path: Path) -> Iterator[tuple[ServerThread, FleetClient, Path]]:
    """Server + Mosquitto started with exactly `fleet-server broker-config`'s output."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    data = tmp_path / "server"
    token = initialize(data, print_token=False)
    port = free_port()
    broker_dir = tmp_path / "broker"
    mqtt_settings = write_broker_config(
        data,
        broker_dir,
        port=port,
        hostnames=("127.0.0.1",),
        user=getpass.getuser(),
        bind="127.0.0.1",
        quiet=True,
    )
    log = tmp_path / "mosquitto.log"
    proc = subprocess.Popen(
        [binary, "-c", str(broker_dir / "mosquitto.conf")],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    pid_file = tmp_path / "mosquitto.pid"
    pid_file.write_text(str(proc.pid))
    time.sleep(0.3)
    settings = Settings.load(data, port=free_port(), broker_pid_file=str(pid_file), **mqtt_settings)
    server = ServerThread(settings)
    server.start()
    client = FleetClient(server.url, token)
    try:
        yield server, client, tmp_path
    finally:
        client.close()
        server.stop()
        proc.terminate()
        proc.wait(5)


def _device_client(agent_dir: Path, device_id: str, received: list[bytes]) -> mqtt.Client:
    ident = agent_dir / "identity"
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="watcher", protocol=mqtt.MQTTv311)
    c.tls_set(
        ca_certs=str(ident / "ca.pem"),
        certfile=str(ident / "cert.pem"),
        keyfile=str(ident / "key.pem"),
        cert_reqs=ssl.CERT_REQUIRED,
    )
    c.on_message = lambda cl, u, m: received.append(m.payload)
    return c


def test_enrolled_device_runs_over_mtls_and_revocation_cuts_it_off(secure_fleet) -> None:  # type: ignore[no-untyped-def]
    server, client, tmp = secure_fleet
    agent = AgentProcess(tmp / "agent", env={"EDGE_AGENT_HEARTBEAT_S": "1"})
    agent.enroll(server.url, client.enrollment_token(), "press-1")
    assert "mqtts://" in (tmp / "agent" / "agent.toml").read_text()
    agent.start()
    try:
        model, sample, rows, _ = breast_cancer_pipeline(tmp)
        client.publish("cancer", model, sample=sample)
        dep = client.wait_deployment(client.deploy("cancer", 1, devices=["press-1"])["id"])
        assert dep["counts"] == {"active": 1}
        assert agent.infer("cancer", rows.tolist())["model_version"] == "1"

        # A second connection with the device's own identity, watching its notify topic.
        received: list[bytes] = []
        watcher = _device_client(tmp / "agent", "press-1", received)
        connected = threading.Event()
        watcher.on_connect = lambda *a: connected.set()
        watcher.connect("127.0.0.1", int(server.app.state.services.mqtt.port))
        watcher.loop_start()
        assert connected.wait(5)
        watcher.subscribe(protocol.device_topic("press-1", "notify"), 1)
        _wait(lambda: received, 10, "the retained notify before revocation")

        started = time.monotonic()
        client.revoke("press-1")
        revoked_after = time.monotonic() - started
        time.sleep(0.5)  # Mosquitto applies the SIGHUP reload in its next loop (ms here)
        received.clear()
        server.app.state.services.mqtt.publish(
            protocol.device_topic("press-1", "notify"),
            b'{"v":1,"targets_version":999}',
            retain=False,
        )
        time.sleep(1.0)
        assert received == [], "a revoked device still receives its topics"
        watcher.loop_stop()
        watcher.disconnect()

        # New connections with the revoked certificate fail at the handshake (CRL).
        again: list[bytes] = []
        retry = _device_client(tmp / "agent", "press-1", again)
        with pytest.raises((ssl.SSLError, OSError)):
            retry.connect("127.0.0.1", int(server.app.state.services.mqtt.port))
            retry.loop_start()
            time.sleep(0.5)
            retry.loop_stop()
            raise OSError("connected")  # pragma: no cover - only if the handshake passed
        assert client.device("press-1")["revoked"] is True
        assert revoked_after < 5
        # Local inference goes on: revocation cuts the fleet link, not the device's service.
        assert agent.infer("cancer", rows.tolist())["model_version"] == "1"
    finally:
        agent.stop()


def test_one_identity_in_two_places_raises_an_alert(tmp_path: Path) -> None:
    with running_server(tmp_path / "server") as fleet:
        first = AgentProcess(tmp_path / "a", env={"EDGE_AGENT_HEARTBEAT_S": "0.5"})
        first.enroll(fleet.url, fleet.client.enrollment_token(), "cloned")
        shutil.copytree(tmp_path / "a", tmp_path / "b")
        second = AgentProcess(tmp_path / "b", env={"EDGE_AGENT_HEARTBEAT_S": "0.5"})
        first.start()
        second.start()
        try:
            alert = _wait(
                lambda: [a for a in fleet.client.alerts() if a["kind"] == "duplicate_identity"],
                60,
                "a duplicate-identity alert",
            )
            assert alert[0]["device_id"] == "cloned"
        finally:
            first.stop()
            second.stop()
