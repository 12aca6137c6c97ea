"""The embedded MQTT broker: amqtt in its own thread, for one-machine set-ups.

amqtt 0.12 speaks MQTT 3.1.1 only, keeps retained messages in memory (the server
republishes what agents need after a restart), and delivers retained messages of filters
other clients subscribed to, so it offers no confidentiality between clients: it binds to
127.0.0.1 by default and is meant for a single machine. Use Mosquitto (``--mqtt``) for a
real fleet. Retained messages are stored in-process (``retain``) rather than published over
the wire, because amqtt acknowledges a QoS 1 publish before it stores the message.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from typing import Any

from fleet_server.exceptions import BrokerError

log = logging.getLogger(__name__)


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class EmbeddedBroker:
    """amqtt running on a private event loop in a daemon thread."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port or _free_port(host)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._broker: Any = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self) -> None:
        logging.getLogger("amqtt").setLevel(logging.WARNING)
        logging.getLogger("transitions").setLevel(logging.WARNING)
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        try:
            fut.result(timeout=15)
        except Exception as e:
            raise BrokerError(f"embedded broker failed to start on {self.url}: {e}") from e
        log.info("embedded MQTT broker listening on %s", self.url)

    async def _start(self) -> None:
        from amqtt.broker import Broker

        config = {
            "listeners": {
                "default": {
                    "type": "tcp",
                    "bind": f"{self.host}:{self.port}",
                    "max_connections": 0,
                }
            },
            # An explicit plugin list: the defaults add $SYS statistics and packet logging.
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
            },
        }
        self._broker = Broker(config, loop=asyncio.get_running_loop())
        await self._broker.start()

    def retain(self, topic: str, payload: bytes, *, broadcast: bool = False) -> None:
        """Store a retained message inside the broker; optionally deliver it to live subscribers."""
        assert self._broker is not None, "broker not started"

        async def _do() -> None:
            await self._broker.retain_message(None, topic, payload, 1)
            if broadcast and payload:
                await self._broker.internal_message_broadcast(topic, payload, 1)

        asyncio.run_coroutine_threadsafe(_do(), self._loop).result(timeout=30)

    def stop(self) -> None:
        if self._broker is not None:
            fut = asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop)
            try:
                fut.result(timeout=10)
            except Exception as e:  # shutting down: report, do not raise
                log.warning("embedded broker shutdown: %s", e)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
