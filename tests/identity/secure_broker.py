"""A real Mosquitto run with exactly the config ``write_mosquitto_config`` writes, and clients.

The broker listens on a free loopback port; clients are paho-mqtt 2 (callback API v2) with
mutual TLS, using identities made the way enrollment makes them (key on the "device", CSR
signed by the fleet CA).
"""

from __future__ import annotations

import getpass
import queue
import shutil
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.identity import DeviceIdentity
from fleet_server.broker_config import BrokerPaths, write_mosquitto_config
from fleet_server.ca import FleetCA
from tests.support.mosquitto import free_port

TIMEOUT = 5.0


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path | None
    key: Path | None


@dataclass
class SecureBroker:
    ca: FleetCA
    paths: BrokerPaths
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    workdir: Path
    identities: dict[str, DeviceIdentity] = field(default_factory=dict)

    def enroll(self, device_id: str) -> DeviceIdentity:
        """Key made on the 'device', CSR signed by the CA, certificate saved on the device."""
        ident = DeviceIdentity.generate(self.workdir / "devices" / device_id)
        ident.save_certificate(
            self.ca.sign_csr(ident.csr_pem("edge-device"), device_id), self.ca.cert_pem
        )
        self.identities[device_id] = ident
        return ident

    def files(self, device_id: str) -> TlsFiles:
        ident = self.identities.get(device_id) or self.enroll(device_id)
        return TlsFiles(ident.ca_path, ident.cert_path, ident.key_path)

    def server_files(self, name: str = "fleet-server") -> TlsFiles:
        out = self.workdir / name
        if not (out / "cert.pem").exists():
            out.mkdir(parents=True)
            cert, key = self.ca.issue_client_cert_for_server(name)
            (out / "cert.pem").write_bytes(cert)
            (out / "key.pem").write_bytes(key)
        return TlsFiles(self.paths.ca, out / "cert.pem", out / "key.pem")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


def start_secure_broker(workdir: Path) -> SecureBroker:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(binary).exists():
        raise RuntimeError("mosquitto is not installed (apt-get install -y mosquitto)")
    workdir.mkdir(parents=True, exist_ok=True)
    ca = FleetCA.create(workdir / "ca")
    port = free_port()
    # Mosquitto started as root switches to `user` before reading any file: run it as us.
    paths = write_mosquitto_config(
        workdir / "broker", ca=ca, port=port, bind="127.0.0.1", user=getpass.getuser()
    )
    log = workdir / "mosquitto.log"
    proc = subprocess.Popen(
        [binary, "-c", str(paths.conf)], stdout=log.open("wb"), stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited: {log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return SecureBroker(ca, paths, port, proc, log, workdir)
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("mosquitto did not start listening")


class Peer:
    """A connected paho client that records what it receives (topic, payload, time)."""

    def __init__(self, client: mqtt.Client, name: str) -> None:
        self.client = client
        self.name = name
        self.messages: queue.Queue[tuple[str, bytes, float]] = queue.Queue()
        self.disconnected = threading.Event()
        self.subacks: set[int] = set()
        self.suback_cond = threading.Condition()

    def subscribe(self, topic: str, qos: int = 1) -> None:
        rc, mid = self.client.subscribe(topic, qos)
        assert rc == mqtt.MQTT_ERR_SUCCESS
        with self.suback_cond:  # the SUBACK may arrive before subscribe() returns its mid
            ok = self.suback_cond.wait_for(lambda: mid in self.subacks, TIMEOUT)
        assert ok, f"{self.name}: no SUBACK for {topic}"

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(TIMEOUT)
        assert info.is_published(), f"{self.name}: no PUBACK for {topic}"

    def wait_for(self, topic: str, payload: bytes | None = None) -> list[tuple[str, bytes]]:
        """Everything received up to and including ``topic`` (+ ``payload``); fails on timeout."""
        seen: list[tuple[str, bytes]] = []
        deadline = time.monotonic() + TIMEOUT
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"{self.name} never received {topic}; got {seen}"
            try:
                t, p, _ = self.messages.get(timeout=left)
            except queue.Empty:
                continue
            seen.append((t, p))
            if t == topic and (payload is None or p == payload):
                return seen

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _client(files: TlsFiles, client_id: str, clean_session: bool) -> mqtt.Client:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv311,
        clean_session=clean_session,
    )
    client.tls_set(
        ca_certs=str(files.ca),
        certfile=str(files.cert) if files.cert else None,
        keyfile=str(files.key) if files.key else None,
        cert_reqs=ssl.CERT_REQUIRED,
        tls_version=ssl.PROTOCOL_TLS_CLIENT,
    )
    return client


@dataclass
class ConnectOutcome:
    connected: bool
    detail: str
    session_present: bool = False


def try_connect(
    broker: SecureBroker, files: TlsFiles, client_id: str, *, clean_session: bool = True
) -> tuple[ConnectOutcome, Peer | None]:
    """Connect and wait for CONNACK or for the broker to drop us (TLS alert, refusal)."""
    client = _client(files, client_id, clean_session)
    peer = Peer(client, client_id)
    done = threading.Event()
    outcome = ConnectOutcome(False, "timeout")

    def on_connect(c: mqtt.Client, u: Any, flags: Any, rc: Any, props: Any) -> None:
        outcome.connected = not rc.is_failure
        outcome.detail = str(rc)
        outcome.session_present = bool(flags.session_present)
        done.set()

    def on_disconnect(c: mqtt.Client, u: Any, flags: Any, rc: Any, props: Any) -> None:
        if not done.is_set():
            outcome.detail = f"disconnected before CONNACK: {rc}"
        peer.disconnected.set()
        done.set()

    def on_subscribe(c: mqtt.Client, u: Any, mid: int, rcs: Any, props: Any) -> None:
        with peer.suback_cond:
            peer.subacks.add(mid)
            peer.suback_cond.notify_all()

    def on_message(c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        peer.messages.put((msg.topic, bytes(msg.payload), time.monotonic()))

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    try:
        client.connect("127.0.0.1", broker.port, keepalive=30)
    except (ssl.SSLError, OSError) as e:  # TLS 1.2 refusals surface in the handshake
        return ConnectOutcome(False, f"handshake failed: {e!r}"), None
    client.loop_start()
    done.wait(TIMEOUT)
    if not outcome.connected:
        client.loop_stop()
        return outcome, None
    return outcome, peer


def connect(
    broker: SecureBroker, files: TlsFiles, client_id: str, *, clean_session: bool = True
) -> Peer:
    outcome, peer = try_connect(broker, files, client_id, clean_session=clean_session)
    assert outcome.connected and peer is not None, outcome.detail
    return peer
