"""The server's MQTT side: publishing (TUF metadata, chunks, hints, acks) and ingestion.

Two publishers share one interface (``publish(topic, payload, retain=...)``): a paho client
for an external broker, and in-process storage for the embedded broker (amqtt acknowledges
a QoS 1 publish before it stores it, so a retained message sent over the wire may not be
there yet when the agent asks).
"""

from __future__ import annotations

import logging
import queue
import socket
import ssl
import threading
from collections.abc import Callable
from urllib.parse import urlparse

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent import protocol
from fleet_server.broker import EmbeddedBroker
from fleet_server.exceptions import BrokerError

log = logging.getLogger(__name__)

PUBLISH_CONNECT_WAIT_S = 15.0
UP_FILTER = f"{protocol.TOPIC_ROOT}/devices/+/up"


class ServerMqtt:
    """One paho client: subscribes to device uplinks, publishes acks and hints."""

    def __init__(
        self,
        url: str,
        client_id: str,
        *,
        on_uplink: Callable[[str, bytes], None],
        embedded: EmbeddedBroker | None = None,
        tls: tuple[str, str, str] | None = None,
        shared_group: str = "",
    ) -> None:
        parsed = urlparse(url)
        if parsed.scheme not in ("mqtt", "mqtts"):
            raise BrokerError(f"broker URL must be mqtt:// or mqtts://, got {url!r}")
        self.host = parsed.hostname or "127.0.0.1"
        self.port = parsed.port or (8883 if parsed.scheme == "mqtts" else 1883)
        self._embedded = embedded
        self._on_uplink = on_uplink
        # Several replicas share ingestion through an MQTT 5 shared subscription; each
        # uplink then reaches one replica. Brokers without $share need one replica.
        self.up_filter = f"$share/{shared_group}/{UP_FILTER}" if shared_group else UP_FILTER
        self.connected = threading.Event()
        self.reconnected = threading.Event()  # set on every connect after the first
        self._ever_connected = False
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5 if shared_group else mqtt.MQTTv311,
            clean_session=None if shared_group else True,
        )
        self._client.max_queued_messages_set(0)
        self._client.max_inflight_messages_set(100)
        if parsed.scheme == "mqtts":
            ca, cert, key = tls or ("", "", "")
            self._client.tls_set(
                ca_certs=ca or None,
                certfile=cert or None,
                keyfile=key or None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        if parsed.username:
            self._client.username_pw_set(parsed.username, parsed.password)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_socket_open = self._on_socket_open
        self._client.reconnect_delay_set(1, 10)

    def start(self, timeout: float = 10.0) -> None:
        self._client.connect_async(self.host, self.port, keepalive=30)
        self._client.loop_start()
        if not self.connected.wait(timeout):
            self.stop()
            raise BrokerError(f"cannot reach the MQTT broker at {self.host}:{self.port}")

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    # paho callbacks: never block here.
    def _on_socket_open(self, client: mqtt.Client, userdata: object, sock: object) -> None:
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: object,
        reason: ReasonCode,
        props: object,
    ) -> None:
        if reason.is_failure:
            log.error("broker refused the server: %s", reason)
            return
        client.subscribe(self.up_filter, qos=1)
        if self._ever_connected:
            self.reconnected.set()
        self._ever_connected = True
        self.connected.set()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: object,
        reason: ReasonCode,
        props: object,
    ) -> None:
        self.connected.clear()
        (log.warning if reason.is_failure else log.info)("disconnected from the broker: %s", reason)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        self._on_uplink(msg.topic, bytes(msg.payload))

    def publish(self, topic: str, payload: bytes, *, retain: bool = True) -> None:
        """Publish and wait until the broker has it (retained messages stored in-process
        when the broker is embedded)."""
        if self._embedded is not None and retain:
            self._embedded.retain(topic, payload, broadcast=True)
            return
        # Ride out a broker restart or a network blip before refusing the caller (503).
        if not self.connected.wait(PUBLISH_CONNECT_WAIT_S):
            raise BrokerError(f"the MQTT broker at {self.host}:{self.port} is unreachable")
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise BrokerError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
        info.wait_for_publish(timeout=30)
        if not info.is_published():
            raise BrokerError(f"publish to {topic} not acknowledged by the broker")

    def unpublish(self, topic: str) -> None:
        self.publish(topic, b"", retain=True)

    def send_nowait(self, topic: str, payload: bytes) -> None:
        """Fire-and-forget QoS 1 (acks): safe to call from paho's own thread."""
        self._client.publish(topic, payload, qos=1, retain=False)


class UplinkQueue:
    """Hands uplink messages from paho's thread to the ingest worker, in batches."""

    def __init__(self, maxsize: int = 100_000) -> None:
        self._q: queue.Queue[tuple[str, bytes]] = queue.Queue(maxsize)

    def put(self, topic: str, payload: bytes) -> None:
        try:
            self._q.put_nowait((topic, payload))
        except queue.Full:
            # Not acked, so the agent keeps it in its outbox and sends it again later.
            log.warning("ingest queue full: dropping an uplink (the agent will resend)")

    def depth(self) -> int:
        return self._q.qsize()

    def get_batch(self, max_items: int, timeout: float) -> list[tuple[str, bytes]]:
        try:
            first = self._q.get(timeout=timeout)
        except queue.Empty:
            return []
        batch = [first]
        while len(batch) < max_items:
            try:
                batch.append(self._q.get_nowait())
            except queue.Empty:
                break
        return batch
