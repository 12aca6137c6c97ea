"""Per-device ACLs and identity on a real Mosquitto run with the generated production config.

Negative checks do not wait for a timeout: after the forbidden message, a message the client
may receive goes the same way (same publisher, same subscriber); Mosquitto keeps their order,
so when the allowed one arrives, the forbidden one would have arrived before it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.protocol import TOPIC_ROOT, device_topic
from tests.identity.secure_broker import (
    Peer,
    SecureBroker,
    TlsFiles,
    connect,
    start_secure_broker,
    try_connect,
)

CHUNK = f"{TOPIC_ROOT}/chunks/" + "ab" * 32
TIMESTAMP = f"{TOPIC_ROOT}/tuf/metadata/timestamp.json"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    b = start_secure_broker(tmp_path_factory.mktemp("secure-broker"))
    yield b
    b.stop()


@pytest.fixture
def server(broker: SecureBroker) -> Iterator[Peer]:
    peer = connect(broker, broker.server_files(), "fleet-server")
    yield peer
    peer.close()


def _device(broker: SecureBroker, device_id: str, client_id: str | None = None) -> Peer:
    return connect(broker, broker.files(device_id), client_id or device_id)


def test_device_never_receives_another_devices_topics(broker: SecureBroker, server: Peer) -> None:
    server.publish(device_topic("b1", "notify"), b"retained-for-b", retain=True)
    a = _device(broker, "a1")
    try:
        # In Mosquitto 2.0.x the SUBACK grants these; the read ACL stops every delivery.
        for topic in (
            device_topic("b1", "notify"),
            device_topic("b1", "ack"),
            device_topic("b1", "up"),
            f"{TOPIC_ROOT}/devices/+/notify",
            f"{TOPIC_ROOT}/#",
            "#",
        ):
            a.subscribe(topic)
        server.publish(device_topic("b1", "ack"), b"ack-for-b")
        server.publish(device_topic("b1", "notify"), b"notify-for-b")
        server.publish(device_topic("a1", "notify"), b"marker")
        seen = a.wait_for(device_topic("a1", "notify"), b"marker")
        assert all(topic.split("/")[2] != "b1" for topic, _ in seen), seen
    finally:
        a.close()
        server.publish(device_topic("b1", "notify"), b"", retain=True)


def test_device_cannot_publish_as_another_device_or_as_the_server(
    broker: SecureBroker, server: Peer
) -> None:
    b = _device(broker, "b2")
    a = _device(broker, "a2")
    try:
        server.subscribe(f"{TOPIC_ROOT}/#")
        b.subscribe(device_topic("b2", "notify"))
        b.subscribe(f"{TOPIC_ROOT}/tuf/#")
        b.subscribe(f"{TOPIC_ROOT}/chunks/#")
        forged = [
            device_topic("b2", "up"),  # telemetry in B's name
            device_topic("b2", "probe"),  # break B's "not found" barrier
            device_topic("b2", "notify"),  # server -> B hint
            device_topic("b2", "ack"),  # fake acks: B would drop unsent telemetry
            TIMESTAMP,  # poison every device's TUF fetch
            CHUNK,
        ]
        for topic in forged:
            a.publish(topic, b"forged")
        a.publish(device_topic("a2", "up"), b"marker")
        seen = server.wait_for(device_topic("a2", "up"), b"marker")
        assert [p for _, p in seen] == [b"marker"], seen
        server.publish(device_topic("b2", "notify"), b"real")
        seen_b = b.wait_for(device_topic("b2", "notify"), b"real")
        assert [p for _, p in seen_b] == [b"real"], seen_b
    finally:
        a.close()
        b.close()


def test_device_uses_its_own_topics_and_reads_shared_artifacts(
    broker: SecureBroker, server: Peer
) -> None:
    server.publish(TIMESTAMP, b"timestamp", retain=True)
    server.publish(CHUNK, b"chunk", retain=True)
    server.subscribe(f"{TOPIC_ROOT}/devices/+/up")
    a = _device(broker, "a3")
    try:
        a.subscribe(f"{TOPIC_ROOT}/tuf/#")
        a.subscribe(f"{TOPIC_ROOT}/chunks/#")
        a.subscribe(device_topic("a3", "notify"))
        a.subscribe(device_topic("a3", "ack"))
        a.subscribe(device_topic("a3", "probe"))
        got = {a.wait_for(TIMESTAMP)[-1][0], a.wait_for(CHUNK)[-1][0]}
        assert got == {TIMESTAMP, CHUNK}
        a.publish(device_topic("a3", "probe"), b"barrier")  # the agent's own barrier
        a.wait_for(device_topic("a3", "probe"), b"barrier")
        a.publish(device_topic("a3", "up"), b"heartbeat")
        server.wait_for(device_topic("a3", "up"), b"heartbeat")
        server.publish(device_topic("a3", "ack"), b"ack")
        server.publish(device_topic("a3", "notify"), b"notify")
        a.wait_for(device_topic("a3", "ack"), b"ack")
        a.wait_for(device_topic("a3", "notify"), b"notify")
    finally:
        a.close()
        server.publish(TIMESTAMP, b"", retain=True)
        server.publish(CHUNK, b"", retain=True)


def test_server_identity_publishes_to_any_device_and_reads_every_up_topic(
    broker: SecureBroker, server: Peer
) -> None:
    devices = {d: _device(broker, d) for d in ("s1", "s2", "s3")}
    try:
        server.subscribe(f"{TOPIC_ROOT}/devices/+/up")
        for d, peer in devices.items():
            peer.subscribe(device_topic(d, "notify"))
            server.publish(device_topic(d, "notify"), d.encode())
            peer.wait_for(device_topic(d, "notify"), d.encode())
            peer.publish(device_topic(d, "up"), d.encode())
            server.wait_for(device_topic(d, "up"), d.encode())
    finally:
        for peer in devices.values():
            peer.close()


def test_client_id_impersonation_neither_kicks_the_victim_nor_takes_its_session(
    broker: SecureBroker, server: Peer
) -> None:
    # B has a persistent session with a queued QoS 1 message waiting for it.
    outcome, b = try_connect(broker, broker.files("b4"), "b4", clean_session=False)
    assert b is not None
    b.subscribe(device_topic("b4", "notify"))
    b.close()
    server.publish(device_topic("b4", "notify"), b"queued-for-b")

    # A presents its own certificate with B's client id and asks to resume the session.
    outcome, a = try_connect(broker, broker.files("a4"), "b4", clean_session=False)
    assert outcome.connected and a is not None
    try:
        assert not outcome.session_present  # A got its own ("a4") session, not B's
        a.subscribe(device_topic("b4", "notify"))
        a.subscribe(device_topic("a4", "notify"))
        server.publish(device_topic("a4", "notify"), b"marker")
        seen = a.wait_for(device_topic("a4", "notify"), b"marker")
        assert all(p != b"queued-for-b" for _, p in seen), seen

        # B, online at the same time, keeps its connection and gets its queued message.
        outcome, b = try_connect(broker, broker.files("b4"), "b4", clean_session=False)
        assert outcome.connected and outcome.session_present and b is not None
        b.wait_for(device_topic("b4", "notify"), b"queued-for-b")
        # A tries again while B is online: B is not kicked off (A only replaces its own).
        _, a2 = try_connect(broker, broker.files("a4"), "b4")
        assert a2 is not None
        server.publish(device_topic("b4", "notify"), b"still-b")
        b.wait_for(device_topic("b4", "notify"), b"still-b")
        assert not b.disconnected.is_set()
        a2.close()
        b.close()
    finally:
        a.close()
    assert "as a4 (" in broker.log.read_text()  # the broker logged A under its own CN


@pytest.mark.parametrize("client_id", ["+", "#", "dev/+/#", "a5/#"])
def test_client_ids_with_wildcards_are_replaced_by_the_certificate_cn(
    broker: SecureBroker, server: Peer, client_id: str
) -> None:
    # Mosquitto 2.0.11 has no setting that refuses such ids; use_username_as_clientid throws
    # them away, so %c/%u patterns only ever see the certificate's CN: they gain nothing.
    a = _device(broker, "a5", client_id)
    try:
        a.subscribe("#")
        server.publish(device_topic("b5", "notify"), b"for-b")
        server.publish(device_topic("a5", "notify"), b"marker")
        seen = a.wait_for(device_topic("a5", "notify"), b"marker")
        assert [t for t, _ in seen] == [device_topic("a5", "notify")], seen
    finally:
        a.close()


def test_handshake_fails_without_a_client_certificate(broker: SecureBroker) -> None:
    outcome, peer = try_connect(broker, TlsFiles(broker.paths.ca, None, None), "anon")
    assert peer is None and not outcome.connected, outcome
    assert _logged(broker, "peer did not return a certificate")


def test_handshake_fails_with_a_certificate_from_another_ca(
    broker: SecureBroker, tmp_path: Path
) -> None:
    # Same CN as a real device, same shape of certificate, but a rogue CA signed it.
    rogue = start_rogue_identity(tmp_path, "a6")
    before = broker.log.read_text().count("certificate verify failed")
    outcome, peer = try_connect(broker, TlsFiles(broker.paths.ca, rogue.cert, rogue.key), "a6")
    assert peer is None and not outcome.connected, outcome
    assert _logged(broker, "certificate verify failed", before + 1)  # refused by the broker
    # The same device with its real certificate gets in.
    _device(broker, "a6").close()


def _logged(broker: SecureBroker, text: str, count: int = 1) -> bool:
    deadline = time.monotonic() + 2
    while broker.log.read_text().count(text) < count:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def start_rogue_identity(tmp_path: Path, device_id: str) -> TlsFiles:
    from edge_agent.identity import DeviceIdentity
    from fleet_server.ca import FleetCA

    rogue_ca = FleetCA.create(tmp_path / "rogue-ca", name="edgefleet fleet CA")
    ident = DeviceIdentity.generate(tmp_path / "rogue-device")
    ident.save_certificate(rogue_ca.sign_csr(ident.csr_pem("x"), device_id), rogue_ca.cert_pem)
    return TlsFiles(ident.ca_path, ident.cert_path, ident.key_path)
