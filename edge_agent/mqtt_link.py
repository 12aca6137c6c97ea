"""The agent's one MQTT connection (paho-mqtt 2), shared by telemetry and the TUF fetcher.

Two ways to receive:

* ``subscribe(filter, callback)``: a long-lived handler (notify hints, acks). Callbacks run
  on paho's network thread: they must return quickly and never block (no publish-and-wait,
  no disk sync, no lock held by a thread that waits on the link); hand work to a queue.
* ``open_queue(topic)``: a ``queue.Queue`` that receives every payload of one exact topic
  (used by the fetcher for retained metadata and chunks). The queue is registered before
  the SUBSCRIBE is sent, because a retained message can arrive before the SUBACK.

Every subscription is made again after a reconnect (the session is clean). Nothing in here
is needed for local inference: the link connects in the background and keeps retrying with
a jittered backoff.
"""

from __future__ import annotations

import logging
import queue
import random
import secrets
import socket
import ssl
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.exceptions import ConfigError

log = logging.getLogger(__name__)

MessageCallback = Callable[[str, bytes], None]


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for mutual TLS: the fleet CA, the device certificate and its key."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None


class TopicQueue(queue.Queue[bytes]):
    """Payloads of one exact topic; ``mid`` is the id of its SUBSCRIBE (for the SUBACK)."""

    def __init__(self, topic: str) -> None:
        super().__init__()
        self.topic = topic
        self.mid: int | None = None


def parse_mqtt_url(url: str) -> tuple[str, int, bool]:
    """``mqtt://host:port`` or ``mqtts://host:port`` -> (host, port, tls)."""
    parsed = urlparse(url)
    if parsed.scheme not in ("mqtt", "mqtts") or not parsed.hostname:
        raise ConfigError(f"broker URL must be mqtt://host:port or mqtts://host:port: {url!r}")
    tls = parsed.scheme == "mqtts"
    try:
        port = parsed.port or (8883 if tls else 1883)
    except ValueError as e:
        raise ConfigError(f"bad port in broker URL {url!r}") from e
    return parsed.hostname, port, tls


class MqttLink:
    """One paho client for the whole agent (MQTT 3.1.1 unless told otherwise)."""

    def __init__(
        self,
        url: str,
        client_id: str,
        *,
        tls: TlsFiles | None = None,
        keepalive: int = 30,
        protocol: int = mqtt.MQTTv311,
        reconnect_min_s: float = 1.0,
        reconnect_max_s: float = 60.0,
    ) -> None:
        self.host, self.port, use_tls = parse_mqtt_url(url)
        self.connected = threading.Event()
        self._keepalive = keepalive
        self._lock = threading.Lock()
        # Called (on paho's thread: must not block) after every successful (re)connect.
        self.on_connected: Callable[[], None] | None = None
        self._handlers: dict[str, MessageCallback] = {}
        self._queues: dict[str, list[TopicQueue]] = {}
        self._subacks: dict[int, threading.Event] = {}
        self._early_acks: set[int] = set()
        self._barriers: dict[bytes, threading.Event] = {}
        self._barrier_topics: set[str] = set()
        self._reconnect = (reconnect_min_s, reconnect_max_s)
        self._started = False
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=protocol,  # type: ignore[arg-type]
            clean_session=True if protocol != mqtt.MQTTv5 else None,
        )
        self._client.max_queued_messages_set(0)
        self._client.max_inflight_messages_set(50)
        if use_tls or tls is not None:
            if tls is None:
                raise ConfigError(f"{url} needs TLS files (CA, certificate, key)")
            self._client.tls_set(
                ca_certs=str(tls.ca),
                certfile=str(tls.cert) if tls.cert else None,
                keyfile=str(tls.key) if tls.key else None,
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        self._client.on_socket_open = self._on_socket_open

    # -- life cycle ------------------------------------------------------------------------
    def start(self) -> None:
        """Connect in the background; returns at once (see ``connected``)."""
        lo, hi = self._reconnect
        # Jitter spreads the reconnects of a whole fleet after a broker restart.
        self._client.reconnect_delay_set(
            min_delay=max(1, round(lo * random.uniform(0.5, 1.5))), max_delay=max(1, int(hi))
        )
        self._client.connect_async(self.host, self.port, keepalive=self._keepalive)
        self._client.loop_start()
        self._started = True

    def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        self._client.disconnect()
        self._client.loop_stop()
        self.connected.clear()

    # -- sending ---------------------------------------------------------------------------
    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> bool:
        """Queue a message; False when not connected or paho refused it (never blocks)."""
        if not self.connected.is_set():
            return False
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        return info.rc == mqtt.MQTT_ERR_SUCCESS

    # -- receiving -------------------------------------------------------------------------
    def subscribe(self, topic_filter: str, callback: MessageCallback) -> None:
        """Long-lived handler (runs on paho's thread: must not block)."""
        with self._lock:
            self._handlers[topic_filter] = callback
        if self.connected.is_set():
            self._client.subscribe(topic_filter, qos=1)

    def unsubscribe(self, topic_filter: str) -> None:
        with self._lock:
            self._handlers.pop(topic_filter, None)
        if self.connected.is_set():
            self._client.unsubscribe(topic_filter)

    def open_queue(self, topic: str) -> TopicQueue:
        """Route every payload of ``topic`` into a new queue, then subscribe."""
        return self.open_queues([topic])[0]

    def open_queues(self, topics: Sequence[str]) -> list[TopicQueue]:
        """Like ``open_queue`` for several topics in one SUBSCRIBE (one SUBACK, same mid)."""
        queues = [TopicQueue(t) for t in topics]
        with self._lock:
            # Registered before subscribing: a retained message can beat the SUBACK.
            for q in queues:
                self._queues.setdefault(q.topic, []).append(q)
        mid = self._subscribe_tracked(list(dict.fromkeys(topics)))
        for q in queues:
            q.mid = mid
        return queues

    def close_queue(self, q: TopicQueue | str) -> None:
        """Stop routing to a queue (or all queues of a topic); unsubscribe the last one."""
        topic = q if isinstance(q, str) else q.topic
        with self._lock:
            left = [x for x in self._queues.get(topic, []) if not isinstance(q, str) and x is not q]
            if left:
                self._queues[topic] = left
                return
            self._queues.pop(topic, None)
            keep = topic in self._handlers or topic in self._barrier_topics
        if not keep and self.connected.is_set():
            self._client.unsubscribe(topic)

    def wait_subscribed(self, mid: int | None, timeout: float) -> bool:
        """Wait for the SUBACK of ``mid``; False on timeout or when not connected."""
        if mid is None:
            return False
        with self._lock:
            ev = self._subacks.get(mid)
        if ev is None:
            return False
        ok = ev.wait(timeout)
        with self._lock:
            self._subacks.pop(mid, None)
        return ok

    def barrier(self, topic: str, timeout: float) -> bool:
        """Round trip a unique token through ``topic`` (a topic only this client uses).

        When it returns True, every retained message for subscriptions acknowledged
        before the call has been delivered (per-client ordering in the broker).
        """
        with self._lock:
            need_sub = topic not in self._barrier_topics
            self._barrier_topics.add(topic)
        if need_sub:
            mid = self._subscribe_tracked([topic])
            if not self.wait_subscribed(mid, timeout):
                with self._lock:
                    self._barrier_topics.discard(topic)
                return False
        token = secrets.token_bytes(12)
        ev = threading.Event()
        with self._lock:
            self._barriers[token] = ev
        try:
            if not self.publish(topic, token, qos=0):
                return False
            return ev.wait(timeout)
        finally:
            with self._lock:
                self._barriers.pop(token, None)

    def _subscribe_tracked(self, topics: list[str]) -> int | None:
        if not self.connected.is_set():
            return None
        rc, mid = self._client.subscribe([(t, 1) for t in topics])
        if rc != mqtt.MQTT_ERR_SUCCESS or mid is None:
            return None
        ev = threading.Event()
        with self._lock:
            if mid in self._early_acks:  # the SUBACK beat us here
                self._early_acks.discard(mid)
                ev.set()
            self._subacks[mid] = ev
        return mid

    # -- paho callbacks (network thread: never block) ---------------------------------------
    def _on_socket_open(self, client: mqtt.Client, userdata: object, sock: object) -> None:
        # Nagle's algorithm adds 40 ms stalls to small request/answer exchanges.
        if isinstance(sock, socket.socket):  # ssl.SSLSocket is one too
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
            log.warning("broker refused the connection: %s", reason)
            return
        with self._lock:
            topics = set(self._handlers) | set(self._queues) | self._barrier_topics
        if topics:  # a clean session: make every subscription again
            client.subscribe([(t, 1) for t in sorted(topics)])
        self.connected.set()
        log.info("connected to %s:%s", self.host, self.port)
        if self.on_connected is not None:
            self.on_connected()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: object,
        reason: ReasonCode,
        props: object,
    ) -> None:
        self.connected.clear()
        with self._lock:
            self._early_acks.clear()
        log.info("disconnected from %s:%s: %s", self.host, self.port, reason)

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reasons: list[ReasonCode],
        props: object,
    ) -> None:
        if any(r.is_failure for r in reasons):
            log.warning("subscription %s refused by the broker: %s", mid, reasons)
        with self._lock:
            ev = self._subacks.get(mid)
            if ev is None:
                if len(self._early_acks) > 1000:  # untracked mids (handlers, reconnects)
                    self._early_acks.clear()
                self._early_acks.add(mid)
        if ev is not None:
            ev.set()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        topic, payload = msg.topic, bytes(msg.payload)
        with self._lock:
            queues = list(self._queues.get(topic, ()))
            barrier = self._barriers.get(payload) if topic in self._barrier_topics else None
            handlers = [cb for f, cb in self._handlers.items() if mqtt.topic_matches_sub(f, topic)]
        for q in queues:
            q.put_nowait(payload)
        if barrier is not None:
            barrier.set()
        for cb in handlers:
            try:
                cb(topic, payload)
            except Exception:  # a handler's bug must not kill the network thread
                log.exception("handler for %s failed", topic)
