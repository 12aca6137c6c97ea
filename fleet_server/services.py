"""Everything the API needs at run time, started and stopped together."""

from __future__ import annotations

import logging
import threading
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from edge_agent import protocol
from fleet_server.broker import EmbeddedBroker
from fleet_server.db import Database, try_job_lock
from fleet_server.identity_watch import IdentityWatch
from fleet_server.ingest import ingest, parse_uplinks
from fleet_server.limits import RateLimiter
from fleet_server.monitoring import DriftMonitor
from fleet_server.mqtt_service import ServerMqtt, UplinkQueue
from fleet_server.settings import Settings
from fleet_server.tables import Assignment, Device

if TYPE_CHECKING:
    from fleet_server.tuf_repo import TufRepository

log = logging.getLogger(__name__)


def tuf_dir(data_dir: Path) -> Path:
    return data_dir / "tuf"


def ca_dir(data_dir: Path) -> Path:
    return data_dir / "ca"


def root_key_path(data_dir: Path) -> Path:
    return data_dir / "offline" / "root-key.pem"


class FleetServices:
    def __init__(self, settings: Settings) -> None:
        from fleet_server.ca import FleetCA

        self.settings = settings
        self.db = Database(settings.database_url)
        self.ca = FleetCA.load(ca_dir(settings.data_dir))
        self.publish_lock = threading.RLock()
        self.uplinks = UplinkQueue()
        self.ingested = 0
        self.identity_watch = IdentityWatch()
        self.monitor = DriftMonitor(
            min_rows=settings.drift_min_rows, consecutive=settings.drift_consecutive
        )
        self.publish_limiter = RateLimiter(settings.publish_rate_per_minute)
        self.broker: EmbeddedBroker | None = None
        self.mqtt: ServerMqtt | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.mqtt_url = settings.mqtt_url
        self._tuf: TufRepository | None = None  # set in start()

    @property
    def tuf(self) -> TufRepository:
        assert self._tuf is not None, "services not started"
        return self._tuf

    @property
    def agent_mqtt_url(self) -> str:
        return self.settings.agent_mqtt_url or self.mqtt_url

    def start(self) -> None:
        self.db.migrate()
        if not self.settings.mqtt_url:
            self.broker = EmbeddedBroker(
                self.settings.embedded_mqtt_host, self.settings.embedded_mqtt_port
            )
            self.broker.start()
            self.mqtt_url = self.broker.url
        tls = None
        if self.settings.mqtt_tls_ca:
            tls = (
                self.settings.mqtt_tls_ca,
                self.settings.mqtt_tls_cert,
                self.settings.mqtt_tls_key,
            )
        self.mqtt = ServerMqtt(
            self.mqtt_url,
            self.settings.mqtt_client_id,
            on_uplink=self.uplinks.put,
            embedded=self.broker,
            tls=tls,
            shared_group=self.settings.mqtt_shared_group,
        )
        self.mqtt.start()
        from fleet_server.tuf_repo import TufRepository

        self._tuf = TufRepository.load(tuf_dir(self.settings.data_dir), self.mqtt)
        # Brokers may have lost retained messages (amqtt keeps them in memory only).
        self.tuf.republish_all()
        self._spawn(self._ingest_loop, "ingest")
        self._spawn(self._refresh_loop, "tuf-refresh")
        self._spawn(self._staleness_loop, "staleness")
        self._spawn(self._drift_loop, "drift")
        self._spawn(self._republish_loop, "republish")

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)
        if self.mqtt is not None:
            self.mqtt.stop()
        if self.broker is not None:
            self.broker.stop()
        self.db.engine.dispose()

    def _spawn(self, target: object, name: str) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)  # type: ignore[arg-type]
        t.start()
        self._threads.append(t)

    def apply_revocations(self, session: Session) -> None:
        """Push every revoked identity to the broker: CRL (new handshakes) and ACL (live
        sessions), then SIGHUP. Without a managed broker dir the CRL is all there is."""
        if not self.settings.broker_dir:
            return
        from fleet_server.broker_config import apply_revocations

        revoked = session.scalars(select(Device.id).where(Device.revoked_at.is_not(None))).all()
        pid = None
        if self.settings.broker_pid_file:
            try:
                pid = int(Path(self.settings.broker_pid_file).read_text().strip())
            except (OSError, ValueError) as e:
                log.error("cannot read the broker pid: %s (reload the broker by hand)", e)
        apply_revocations(Path(self.settings.broker_dir), self.ca, revoked, pid=pid)

    def notify(self, device_ids: list[str]) -> None:
        """Tell devices to run an update cycle (an unsigned hint; the assignment is signed)."""
        assert self.mqtt is not None
        hint = protocol.Notify(self.tuf.targets_version).to_bytes()
        for device_id in device_ids:
            self.mqtt.publish(protocol.device_topic(device_id, "notify"), hint, retain=True)

    def _ingest_loop(self) -> None:
        while not self._stop.is_set():
            batch = self.uplinks.get_batch(500, 0.2)
            if not batch:
                continue
            try:
                envs = parse_uplinks(batch)
                with self.db.begin() as session:
                    acks = ingest(session, envs, self.identity_watch)
            except Exception:  # a bad batch must not stop ingestion; agents resend
                log.exception("ingest failed for a batch of %d", len(batch))
                continue
            self.ingested += len(envs)
            assert self.mqtt is not None
            for device_id, seqs in acks.items():
                self.mqtt.send_nowait(
                    protocol.device_topic(device_id, "ack"), protocol.Ack(tuple(seqs)).to_bytes()
                )

    def _staleness_loop(self) -> None:
        from fleet_server.alerting import check_staleness

        after = timedelta(seconds=self.settings.staleness_s)
        while not self._stop.wait(min(60.0, self.settings.staleness_s / 2)):
            try:
                with self.db.begin() as session:
                    if try_job_lock(session, "staleness"):
                        check_staleness(session, after)
            except Exception:
                log.exception("staleness check failed")

    def _republish_loop(self) -> None:
        """A broker that restarted without persistence has lost every retained message:
        put the TUF repository, the chunks and the devices' hints back."""
        assert self.mqtt is not None
        while not self._stop.is_set():
            if not self.mqtt.reconnected.wait(1.0):
                continue
            self.mqtt.reconnected.clear()
            try:
                with self.publish_lock:
                    self.tuf.republish_all()
                with self.db.session() as session:
                    devices = list(session.scalars(select(Assignment.device_id)))
                self.notify(devices)
                log.info("republished the repository after a broker reconnect")
            except Exception:
                log.exception("republishing after a broker reconnect failed")

    def _drift_loop(self) -> None:
        while not self._stop.wait(self.settings.drift_interval_s):
            try:
                with self.db.begin() as session:
                    if try_job_lock(session, "drift"):
                        self.monitor.run_once(session)
            except Exception:
                log.exception("drift evaluation failed")

    def _refresh_loop(self) -> None:
        interval = max(5.0, self.settings.timestamp_refresh_s)
        # Re-sign what expires within two loop intervals (and never less than 12 hours), so
        # a late or failed run still leaves agents valid metadata.
        within = max(timedelta(hours=12), timedelta(seconds=2 * interval))
        first = True  # a server that was down for a day must not wait an interval first
        while first or not self._stop.wait(interval):
            first = False
            try:
                with self.publish_lock, self.db.begin() as session:
                    if try_job_lock(session, "tuf-refresh"):
                        self.tuf.refresh_expiring(within=within)
            except Exception:
                log.exception("TUF metadata refresh failed")
