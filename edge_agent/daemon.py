"""The agent daemon: serves models locally, follows its signed assignment, reports upstream.

Threads: the local API (serving never waits on the network), an update worker (TUF cycles,
one at a time), a telemetry timer, and a sender that drains the durable outbox over MQTT and
deletes records only when the server's application-level ack arrives.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import secrets
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from edge_agent import protocol
from edge_agent.config import AgentConfig
from edge_agent.enroll import identity_dir, metadata_dir, targets_dir
from edge_agent.exceptions import ConfigError, EdgeAgentError, ProtocolError, UpdateError
from edge_agent.fsutil import atomic_write
from edge_agent.lifecycle import Activator, UpdateRunner
from edge_agent.store import ModelStore, UpdateStep

if TYPE_CHECKING:
    from edge_agent.bundle import BundleInfo

log = logging.getLogger(__name__)

INBOX_POLL_S = 1.0
SENDER_POLL_S = 0.5
PRIORITY_REPORT = 10
PRIORITY_ROUTINE = 0
RESEND_AFTER_S = 15.0


class _TrustFetcher:
    """Adapts one TUF update cycle to the lifecycle's ``Fetcher`` interface."""

    def __init__(self, cycle: Any) -> None:
        self._cycle = cycle

    def package(self, path: str) -> protocol.ModelPackage:
        result: protocol.ModelPackage = self._cycle.package(path)
        return result

    def model_file(self, package: protocol.ModelPackage) -> Path:
        path: Path = self._cycle.model_file(package)
        return path


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        from edge_agent.health import LatencyHistogram
        from edge_agent.outbox import Outbox
        from edge_agent.runtime import ModelRegistry

        if not config.device_id or not config.mqtt_url:
            raise ConfigError(f"{config.data_dir} is not enrolled: run `edge-agent enroll` first")
        self.config = config
        self.device_id = protocol.validate_device_id(config.device_id)
        self.store = ModelStore(config.data_dir, config.keep_versions)
        self.state = self.store.load_state()
        self.registry = ModelRegistry()
        self.outbox = Outbox(
            config.data_dir / "outbox.db",
            self.device_id,
            max_bytes=config.outbox_max_bytes,
            max_age_s=config.outbox_max_age_s,
        )
        self.latency = LatencyHistogram()
        self.counts: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.summarizers: dict[str, Any] = {}
        self._stats_lock = threading.Lock()
        self._stop = threading.Event()
        self._send_now = threading.Event()
        self.last_report: tuple[str, str, str] = ("", "", "")
        self._lock: Any = None
        self.instance = secrets.token_hex(8)  # tells two copies of one identity apart
        self._triggers: queue.Queue[str] = queue.Queue()
        self._inflight: dict[int, float] = {}
        self._inflight_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.api: Any = None
        self.link: Any = None
        self.runner = UpdateRunner(
            self.store,
            self,
            Activator(self._warm, self._switch, self._restore),
            crash_hook=_crash_hook_from_env(),
            min_free_bytes=config.min_free_bytes,
        )

    # -- start / stop ---------------------------------------------------------------------
    def start(self) -> None:
        from edge_agent.http_api import start_api

        self._lock = hold_data_dir(self.config.data_dir)
        if self._lock is None:
            raise ConfigError(f"another agent is running on {self.config.data_dir}")

        self._load_active()
        self.api = start_api(
            self.registry,
            host=self.config.api_host,
            port=self.config.api_port,
            unix_socket=self.config.socket_path if self.config.unix_socket else None,
            on_infer=self._on_infer,
            extra_routes={("POST", "/v2/labels"): self._on_labels},
            max_body_bytes=self.config.max_request_bytes,
        )
        atomic_write(self.config.data_dir / "api.port", str(self.api.port).encode())
        self.link = self._make_link()
        self.link.start()
        if self.state.step is not None:  # interrupted by a crash or power loss
            self.runner.resume(self.state)
        self._triggers.put("start")
        for target, name in (
            (self._update_loop, "updates"),
            (self._telemetry_loop, "telemetry"),
            (self._sender_loop, "sender"),
        ):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        _sd_notify("READY=1")
        log.info("agent %s serving on 127.0.0.1:%s", self.device_id, self.api.port)

    def _make_link(self) -> Any:
        from edge_agent.mqtt_link import MqttLink, TlsFiles

        tls = None
        if self.config.mqtt_tls or self.config.mqtt_url.startswith("mqtts://"):
            ident = identity_dir(self.config.data_dir)
            tls = TlsFiles(ca=ident / "ca.pem", cert=ident / "cert.pem", key=ident / "key.pem")
        link = MqttLink(self.config.mqtt_url, self.device_id, tls=tls)
        # A (re)connect may follow a missed notify or a crash: look for work right away.
        link.on_connected = lambda: self._triggers.put("connected")
        link.subscribe(protocol.device_topic(self.device_id, "notify"), self._on_notify)
        link.subscribe(protocol.device_topic(self.device_id, "ack"), self._on_ack)
        return link

    def stop(self) -> None:
        self._stop.set()
        self._send_now.set()
        self._triggers.put("stop")
        for t in self._threads:
            t.join(timeout=5)
        if self.link is not None:
            self.link.stop()
        if self.api is not None:
            self.api.close()

    def request_stop(self) -> None:
        self._stop.set()
        self._send_now.set()

    def run_forever(self) -> None:
        self.start()
        try:
            while not self._stop.wait(5.0):
                _sd_notify("WATCHDOG=1")
        finally:
            self.stop()

    # -- serving --------------------------------------------------------------------------
    def _load_active(self) -> None:
        from edge_agent.runtime import configure_memory, load_model

        configure_memory(self.config.max_model_memory_bytes)
        for name, version in list(self.state.active.items()):
            installed = self.store.installed(name, version)
            if installed is None:
                log.error("active model %s:%s is missing on disk", name, version)
                continue
            try:
                self.registry.swap(load_model(installed[1], installed[0]))
                self._summarizer_for(installed[0])
            except EdgeAgentError as e:
                log.error("cannot load active model %s:%s: %s", name, version, e)

    def _warm(self, package: protocol.ModelPackage, path: Path) -> object:
        from edge_agent.runtime import load_model
        from edge_agent.selftest import run_health_gate

        model = load_model(path, package)
        run_health_gate(model, package)
        return (model, package)

    def _switch(self, warm: object) -> None:
        model, package = cast(tuple[Any, protocol.ModelPackage], warm)
        self._summarizer_for(package)
        self.registry.swap(model)

    def _restore(self, name: str, version: int | None) -> None:
        from edge_agent.runtime import load_model

        if version is None:
            self.registry.remove(name)
            return
        installed = self.store.installed(name, version)
        if installed is None:
            # The runner keeps the rolling_back step and retries; the registry is untouched.
            raise UpdateError("internal", f"previous version {name}:{version} is missing on disk")
        self.registry.swap(load_model(installed[1], installed[0]))

    def _summarizer_for(self, package: protocol.ModelPackage) -> None:
        from edge_agent.summaries import WindowSummarizer

        if package.profile:
            try:
                self.summarizers[package.name] = (
                    package.version,
                    WindowSummarizer(
                        package.profile,
                        k_min=self.config.summary_k,
                        min_rows=self.config.summary_min_rows,
                        epsilon=self.config.summary_epsilon or None,
                    ),
                )
            except Exception as e:  # a bad profile must not block serving
                log.warning("no data summaries for %s: %s", package.name, e)

    def _on_infer(
        self,
        name: str,
        inputs: dict[str, np.ndarray],
        outputs: dict[str, np.ndarray],
        seconds: float,
        request_id: str | None = None,
    ) -> None:
        self.latency.record(seconds)
        with self._stats_lock:
            self.counts[name] = self.counts.get(name, 0) + 1
            entry = self.summarizers.get(name)
            if entry is not None:
                entry[1].observe(inputs, outputs, inference_ids(request_id, inputs))

    def _on_labels(self, body: bytes) -> tuple[int, Any]:
        """POST /v2/labels {"model": NAME, "labels": [{"id": ID, "label": L}, ...]}: ground
        truth for recent predictions (ID: the request's "id", or "ID:ROW" for batches). Only
        confusion counts per window go upstream, never the rows."""
        try:
            doc = json.loads(body)
            name = str(doc["model"])
            items = [(str(x["id"]), x["label"]) for x in doc["labels"]]
        except (ValueError, KeyError, TypeError) as e:
            return 400, {"error": f"expected {{model, labels: [{{id, label}}]}}: {e}"}
        with self._stats_lock:
            entry = self.summarizers.get(name)
            if entry is None:
                return 404, {"error": f"no monitored model {name!r}"}
            matched = sum(bool(entry[1].record_label(i, label)) for i, label in items)
        return 200, {"matched": matched, "unknown": len(items) - matched}

    # -- updates --------------------------------------------------------------------------
    def _on_notify(self, topic: str, payload: bytes) -> None:
        if payload:
            self._triggers.put("notify")

    def _update_loop(self) -> None:
        next_check = time.monotonic() + self.config.update_check_s
        while not self._stop.is_set():
            try:
                self._triggers.get(timeout=INBOX_POLL_S)
            except queue.Empty:
                self._process_inbox()
                if time.monotonic() < next_check:
                    continue
            if self._stop.is_set():
                return
            next_check = time.monotonic() + self.config.update_check_s
            while not self._triggers.empty():  # coalesce bursts of hints
                self._triggers.get_nowait()
            try:
                self.update_cycle()
            except Exception:
                log.exception("update cycle failed")

    def update_cycle(self) -> None:
        """One TUF refresh; apply the signed assignment if it changed."""
        if self.config.fetch_via != "https" and not self.link.connected.is_set():
            return
        trust = self._trust_client()
        cycle = trust.cycle()
        fetcher = _TrustFetcher(cycle)
        if self.state.step is not None:
            self.runner.run(self.state, fetcher)
        try:
            assignment = cycle.assignment(self.device_id)
        except UpdateError as e:
            log.warning("assignment refused: %s", e)
            self._report_refusal(e)
            return
        if assignment is None or assignment.serial <= self.state.applied_serial:
            return  # nothing assigned, or a replay of what is applied: a no-op
        for model in assignment.models:
            # begin() skips a deployment that already ended and reports one of the version
            # already active as active at once (a re-deployment must not stay pending).
            self.runner.begin(self.state, model)
            self.runner.run(self.state, fetcher)
        self.state.applied_serial = assignment.serial
        self.store.save_state(self.state)
        self._send_heartbeat()

    # -- air-gapped bundles ---------------------------------------------------------------
    def apply_bundle(self, info: BundleInfo) -> dict[str, Any]:
        """Install a verified bundle through the same lifecycle as an MQTT deployment."""
        from edge_agent.bundle import DirFetcher
        from edge_agent.trust import TrustClient

        if self.state.active.get(info.name) == info.version:
            return {
                "status": "active",
                "model": info.name,
                "version": info.version,
                "message": "already active",
            }
        trust = TrustClient(
            metadata_dir(self.config.data_dir),
            targets_dir(self.config.data_dir),
            lambda: DirFetcher(info.root),
        )
        # Each import is its own deployment: a retry after a refusal is a new attempt.
        deployment = f"{info.deployment}-{secrets.token_hex(3)}"
        model = protocol.AssignedModel(info.name, info.version, info.package, deployment)
        self.runner.begin(self.state, model)
        self.runner.run(self.state, _TrustFetcher(trust.cycle()))
        status, reason, message = self.last_report
        return {
            "status": status,
            "reason": reason,
            "message": message,
            "model": info.name,
            "version": info.version,
        }

    def _process_inbox(self) -> None:
        inbox = self.config.data_dir / "inbox"
        if not inbox.is_dir():
            return
        from edge_agent.bundle import unpack_info

        for ready in sorted(inbox.glob("*.ready")):
            try:
                result = self.apply_bundle(unpack_info(ready))
            except EdgeAgentError as e:
                result = {
                    "status": "failed",
                    "reason": getattr(e, "reason", "internal"),
                    "message": str(e),
                }
            atomic_write(ready / "result.json", json.dumps(result).encode())
            ready.rename(ready.with_suffix(".done"))

    def _trust_client(self) -> Any:
        """TUF over MQTT (default) or over HTTPS from the server: same verification."""
        from edge_agent.mqtt_fetcher import MqttFetcher
        from edge_agent.trust import TrustClient

        md, td = metadata_dir(self.config.data_dir), targets_dir(self.config.data_dir)
        if self.config.fetch_via == "https":
            from tuf.ngclient.urllib3_fetcher import Urllib3Fetcher

            base = self.config.server_url.rstrip("/")
            return TrustClient(
                md,
                td,
                Urllib3Fetcher,
                metadata_url=f"{base}/tuf/metadata/",
                targets_url=f"{base}/tuf/targets/",
            )
        return TrustClient(
            md,
            td,
            lambda: MqttFetcher(self.link, self.device_id, timeout=self.config.fetch_timeout_s),
        )

    def _report_refusal(self, e: UpdateError) -> None:
        self.outbox.append(
            "alert", {"reason": e.reason, "message": e.message[:500]}, PRIORITY_REPORT
        )

    # Reporter for the lifecycle
    def deployment(self, step: UpdateStep, status: str) -> None:
        self.last_report = (status, step.reason, step.message)
        self.outbox.append(
            "deployment",
            {
                "deployment": step.deployment,
                "model": step.name,
                "version": step.version,
                "status": status,
                "reason": step.reason,
                "message": step.message[:500],
            },
            PRIORITY_REPORT,
        )
        self._wake_sender()

    # -- telemetry ------------------------------------------------------------------------
    def _check_certificate(self) -> None:
        """Renew the device certificate before it expires, then reconnect with it."""
        from edge_agent.renewal import renew_if_due

        if (
            not self.config.server_url
            or not (identity_dir(self.config.data_dir) / "cert.pem").exists()
        ):
            return
        try:
            renewed = renew_if_due(
                self.config.server_url,
                self.device_id,
                identity_dir(self.config.data_dir),
                within_days=self.config.cert_renew_days,
            )
        except EdgeAgentError as e:
            log.warning("certificate renewal: %s (the current one stays in use)", e)
            return
        if renewed and self.link is not None and self.config.mqtt_url.startswith("mqtts://"):
            old, self.link = self.link, self._make_link()
            self.link.start()
            old.stop()

    def _telemetry_loop(self) -> None:
        last_summary = time.monotonic()
        last_cert_check = time.monotonic()
        self._check_certificate()
        while not self._stop.wait(self.config.heartbeat_s):
            if time.monotonic() - last_cert_check > 6 * 3600:
                last_cert_check = time.monotonic()
                self._check_certificate()
            self._send_heartbeat()
            if time.monotonic() - last_summary >= self.config.summary_window_s:
                last_summary = time.monotonic()
                self._send_summaries()

    def heartbeat_body(self) -> dict[str, Any]:
        from edge_agent.health import collect_health

        with self._stats_lock:
            counts, self.counts = self.counts, {}
        stats = self.outbox.stats()
        return {
            "state": "updating" if self.state.step else "online",
            "instance": self.instance,
            "models": dict(self.state.active),
            "inference_counts": counts,
            "latency": self.latency.snapshot_and_reset(),
            "health": collect_health(self.config.data_dir),
            "outbox": {
                "depth": stats.depth,
                "bytes": stats.bytes,
                "dropped": dict(stats.dropped_by_kind),
            },
        }

    def _send_heartbeat(self) -> None:
        self.outbox.append("heartbeat", self.heartbeat_body(), PRIORITY_ROUTINE)
        self._wake_sender()

    def _send_summaries(self) -> None:
        with self._stats_lock:
            items = list(self.summarizers.items())
            bodies = [(n, v, s.flush()) for n, (v, s) in items]
        for name, version, body in bodies:
            if body is not None:
                self.outbox.append(
                    "summary", {"model": name, "version": version, **body}, PRIORITY_ROUTINE
                )

    # -- sender ---------------------------------------------------------------------------
    def _wake_sender(self) -> None:
        self._send_now.set()

    def _on_ack(self, topic: str, payload: bytes) -> None:
        try:
            ack = protocol.Ack.from_bytes(payload)
        except ProtocolError as e:
            log.warning("bad ack: %s", e)
            return
        self.outbox.ack(list(ack.seqs))
        with self._inflight_lock:
            for s in ack.seqs:
                self._inflight.pop(s, None)

    def _sender_loop(self) -> None:
        up = protocol.device_topic(self.device_id, "up")
        while not self._stop.is_set():
            self._send_now.wait(SENDER_POLL_S)  # reports go out at once, the rest on the poll
            self._send_now.clear()
            if self.link is None or not self.link.connected.is_set():
                continue
            now = time.monotonic()
            for env in self.outbox.pending(200):
                with self._inflight_lock:
                    sent = self._inflight.get(env.seq)
                    if sent is not None and now - sent < RESEND_AFTER_S:
                        continue
                    self._inflight[env.seq] = now
                if not self.link.publish(up, env.to_bytes(compress=True), qos=1):
                    with self._inflight_lock:
                        self._inflight.pop(env.seq, None)
                    break


def inference_ids(request_id: str | None, inputs: dict[str, np.ndarray]) -> list[str] | None:
    """Per-row ids for later labels: the request id, or "id:row" for a batch."""
    if not request_id or not inputs:
        return None
    rows = len(next(iter(inputs.values())))
    return [request_id] if rows == 1 else [f"{request_id}:{i}" for i in range(rows)]


def hold_data_dir(data_dir: Path) -> Any:
    """An exclusive lock on the data dir for this process's life; None if someone holds it."""
    import fcntl

    f = (data_dir / "agent.lock").open("a")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        return None
    return f


def _sd_notify(message: str) -> None:
    """Tell systemd (Type=notify, WatchdogSec=) we are ready / alive; no-op elsewhere."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    import socket

    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(addr)
            s.sendall(message.encode())
    except OSError as e:
        log.debug("sd_notify failed: %s", e)


def _crash_hook_from_env() -> Any:
    """Test seam: EDGE_AGENT_TEST_CRASH_IN=<state> kills the process when entering it."""
    target = os.environ.get("EDGE_AGENT_TEST_CRASH_IN")
    if not target:
        return None

    def hook(state: str) -> None:
        if state == target:
            os.kill(os.getpid(), 9)

    return hook
