"""Delivery benchmark: one model to N agents over Mosquitto, and metadata per device.

For N in (1, 10, 50) and two models (RandomForest 100 trees depth 10, about 2.4 MB as
ONNX; an ONNX MLP with a large initializer, about 50 MB), it publishes a fresh version
through the fleet server's API, deploys it to N enrolled agents and measures:

* seconds from the deploy call until every device reports ``active``, and the ratio to
  N = 1 measured in the same run;
* server egress: every byte the server handed to the broker (publisher wrapped: model
  chunks, manifests, TUF metadata, assignments, hints, acks) divided by the model size;
  the naive baseline (one copy per device) is N;
* broker fan-out from Mosquitto's ``$SYS/broker/bytes/sent`` over N x model size.

Then, with 10,000 assignments in a TUF repository built directly, the metadata bytes one
agent reads in a TUF cycle (timestamp, snapshot, targets, its hash bin, its assignment,
chunk manifests included), cold and after a deployment, against the baseline of every
assignment in one targets role.

Agents are real ``edge_agent.daemon.Agent`` instances, up to 10 per worker process, each with
its own data dir and device id, enrolled through the API.

    .venv/bin/python -m bench.delivery [--quick] [--sizes 1,10,50]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
AGENTS_PER_WORKER = 10


# -- models ----------------------------------------------------------------------------------
def small_model(seed: int) -> tuple[bytes, bytes]:
    """A RandomForest (100 trees, depth 10) saved with skops, and a CSV sample."""
    import skops.io as sio
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier

    x, y = make_classification(
        n_samples=12000, n_features=20, n_informative=10, flip_y=0.05, random_state=seed
    )
    x = x.astype(np.float32)
    rf = RandomForestClassifier(n_estimators=100, max_depth=10, random_state=seed, n_jobs=2)
    rf.fit(x, y)
    buf = io.StringIO()
    header = ",".join(f"f{i}" for i in range(x.shape[1]))
    np.savetxt(buf, x[:200], delimiter=",", fmt="%.8g", header=header, comments="")
    return bytes(sio.dumps(rf)), buf.getvalue().encode()


def big_model(seed: int, size: int = 50_000_000) -> bytes:
    """An ONNX MLP (MatMul, Relu, MatMul) whose initializers make it ``size`` bytes."""
    from onnx import TensorProto, helper, numpy_helper

    n_in = 32
    hidden = size // ((n_in + 2) * 4)
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((n_in, hidden), dtype=np.float32) * 0.01).astype(np.float32)
    w2 = (rng.standard_normal((hidden, 2), dtype=np.float32) * 0.01).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["input", "w1"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("MatMul", ["r", "w2"], ["scores"]),
        ],
        "big",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, n_in])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [None, 2])],
        initializer=[numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="bench"
    )
    model.ir_version = 8
    return bytes(model.SerializeToString())


# -- agents in worker processes ----------------------------------------------------------------
def worker_main(dirs: list[str]) -> int:
    """Run one Agent per data dir in this process until stdin closes."""
    import logging

    from edge_agent.config import AgentConfig
    from edge_agent.daemon import Agent

    logging.basicConfig(level=logging.WARNING)
    agents = [Agent(AgentConfig.load(Path(d))) for d in dirs]
    for a in agents:
        a.start()
    print("ready", flush=True)
    sys.stdin.read()
    for a in agents:
        a.stop()
    return 0


class Workers:
    """Worker processes hosting agents (``AGENTS_PER_WORKER`` each)."""

    def __init__(self, dirs: list[Path], log_dir: Path) -> None:
        env = {
            **os.environ,
            "EDGE_AGENT_MAX_MODEL_MEMORY_BYTES": str(16 * 1024**3),
            "EDGE_AGENT_FETCH_TIMEOUT_S": "60",
        }
        self.procs: list[subprocess.Popen[bytes]] = []
        for i in range(0, len(dirs), AGENTS_PER_WORKER):
            group = [str(d) for d in dirs[i : i + AGENTS_PER_WORKER]]
            log = (log_dir / f"worker-{i // AGENTS_PER_WORKER}.log").open("wb")
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "bench.delivery", "--worker", *group],
                    cwd=REPO,
                    env=env,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=log,
                )
            )
        for p in self.procs:
            assert p.stdout is not None
            if p.stdout.readline().strip() != b"ready":
                raise RuntimeError(f"a worker did not start: see {log_dir}")

    def stop(self) -> None:
        for p in self.procs:
            assert p.stdin is not None
            p.stdin.close()
        for p in self.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


# -- measuring the server and the broker ------------------------------------------------------
class EgressCounter:
    """Wraps the server's MQTT publisher: counts payload and topic bytes it sends."""

    def __init__(self, mqtt: Any) -> None:
        self.bytes = 0
        self.messages = 0
        self._lock = threading.Lock()
        orig_publish, orig_send = mqtt.publish, mqtt.send_nowait

        def publish(topic: str, payload: bytes, *, retain: bool = True) -> None:
            self._add(topic, payload)
            orig_publish(topic, payload, retain=retain)

        def send_nowait(topic: str, payload: bytes) -> None:
            self._add(topic, payload)
            orig_send(topic, payload)

        mqtt.publish, mqtt.send_nowait = publish, send_nowait

    def _add(self, topic: str, payload: bytes) -> None:
        with self._lock:
            self.bytes += len(payload) + len(topic.encode())
            self.messages += 1


class BrokerStats:
    """Mosquitto's ``$SYS/broker/bytes/sent`` (needs ``sys_interval``)."""

    def __init__(self, url: str) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        host, port = url.removeprefix("mqtt://").split(":")
        self.sent = -1
        self.updated = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-sys")

        def on_message(c: Any, u: Any, msg: Any) -> None:
            self.sent = int(msg.payload)
            self.updated.set()

        self.client.on_message = on_message
        self.client.on_connect = lambda c, *a: c.subscribe("$SYS/broker/bytes/sent")
        self.client.connect(host, int(port))
        self.client.loop_start()

    def read(self, timeout: float = 5.0) -> int:
        """The next fresh value (waits for one ``sys_interval``)."""
        self.updated.clear()
        self.updated.wait(timeout)
        return self.sent

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class Row:
    model: str
    size: int
    n: int
    publish_s: float
    active_s: float
    egress: int
    fanout: int
    failed: int


def _wait_active(client: Any, dep_id: str, n: int, timeout: float) -> tuple[float, int]:
    t0 = time.monotonic()
    while True:
        dep = client.deployment(dep_id)
        counts = dep["counts"]
        done = counts.get("active", 0) + counts.get("failed", 0) + counts.get("rolled_back", 0)
        if done >= n:
            bad = [d for d in dep["devices"] if d["status"] != "active"]
            for d in bad:
                print(f"  {d['device']}: {d['status']} {d['reason']} {d['message'][:200]}")
            return time.monotonic() - t0, len(bad)
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"deployment {dep_id}: {counts}")
        time.sleep(0.1)


@contextmanager
def fleet(work: Path, n_agents: int) -> Iterator[tuple[Any, Any, list[str], Any, Any]]:
    """Mosquitto, a fleet server on it, ``n_agents`` enrolled agents running in workers."""
    sys.path.insert(0, str(REPO))
    from edge_agent.enroll import enroll
    from tests.support.fleet import running_server
    from tests.support.mosquitto import start_mosquitto

    broker = start_mosquitto(work / "mosquitto", extra="sys_interval 1")
    try:
        with running_server(work / "server", mqtt_url=broker.url) as srv:
            services = srv.server.app.state.services
            counter = EgressCounter(services.mqtt)
            dirs = [work / "agents" / f"a{i:03d}" for i in range(n_agents)]
            ids = [f"bench-{i:03d}" for i in range(n_agents)]
            for d, dev in zip(dirs, ids, strict=True):
                enroll(srv.url, srv.client.enrollment_token(), d, name=dev, api_port=0)
            workers = Workers(dirs, work)
            stats = BrokerStats(broker.url)
            try:
                yield srv.client, counter, ids, stats, services
            finally:
                stats.close()
                workers.stop()
    finally:
        broker.stop()


def run_deliveries(work: Path, sizes: list[int], models: list[str]) -> list[Row]:
    rows: list[Row] = []
    with fleet(work, max(sizes)) as (client, counter, ids, stats, _services):
        seed = 0
        for n in sizes:
            for kind in models:
                seed += 1
                before_egress = counter.bytes
                before_sent = stats.read()
                t0 = time.monotonic()
                if kind == "small":
                    data, sample = small_model(seed)
                    published = client.publish("rf", data, sample=sample, filename="rf.skops")
                else:
                    blob = big_model(seed)
                    published = client.publish("big", blob, filename="big.onnx")
                publish_s = time.monotonic() - t0
                size = int(published["size"])
                dep = client.deploy(published["name"], published["version"], devices=ids[:n])
                active_s, failed = _wait_active(client, dep["id"], n, timeout=600)
                time.sleep(0.3)  # the last acks
                egress = counter.bytes - before_egress
                fanout = stats.read() - before_sent
                row = Row(kind, size, n, publish_s, active_s, egress, fanout, failed)
                print(
                    f"  {kind} {size / 1e6:.1f} MB to {n}: {active_s:.1f} s, "
                    f"egress x{egress / size:.2f}, fan-out x{fanout / (n * size):.2f}",
                    flush=True,
                )
                rows.append(row)
    return rows


# -- metadata per device with 10,000 devices ---------------------------------------------------
class CountingFileFetcher:
    """A FetcherInterface serving a repository's files from disk, counting bytes per file
    kind as the MQTT transport would carry them (target = chunk manifest + chunks)."""

    def __init__(self, repo_dir: Path) -> None:
        from tuf.ngclient.fetcher import FetcherInterface

        from edge_agent import protocol
        from fleet_server.tuf_repo import chunk_manifest

        outer = self
        self.counts: dict[str, int] = {}

        class _F(FetcherInterface):
            def _fetch(self, url: str) -> Iterator[bytes]:
                from tuf.api.exceptions import DownloadHTTPError

                topic = url.removeprefix(protocol.MQTT_URL_SCHEME)
                if topic.startswith(protocol.TUF_METADATA_PREFIX):
                    name = topic[len(protocol.TUF_METADATA_PREFIX) :]
                    path = repo_dir / "metadata" / name
                    kind = name.split(".")[-2] if name.count(".") >= 2 else name.split(".")[0]
                else:
                    name = topic[len(protocol.TUF_TARGETS_PREFIX) :]
                    path = repo_dir / "targets" / name
                    kind = "assignment" if name.startswith("assignments/") else "target"
                kind = "bin" if kind.startswith("bins-") else kind
                if not path.exists():
                    outer.counts["404"] = outer.counts.get("404", 0) + 1
                    raise DownloadHTTPError(f"{name} not found", 404)
                data = path.read_bytes()
                wire = len(data)
                if topic.startswith(protocol.TUF_TARGETS_PREFIX):
                    wire += len(chunk_manifest(data)[0].to_bytes())
                outer.counts[kind] = outer.counts.get(kind, 0) + wire
                return iter((data,))

        self.fetcher = _F()


def metadata_per_device(work: Path, devices: int) -> dict[str, Any]:
    from edge_agent import protocol
    from edge_agent.trust import TrustClient
    from fleet_server.tuf_repo import NullPublisher, TufRepository

    repo_dir = work / "repo"
    repo = TufRepository.create(
        repo_dir, offline_root_key_path=work / "root.pem", publisher=NullPublisher()
    )
    ids = [f"dev-{i:05d}" for i in range(devices)]

    def assign_all(serial: int) -> None:
        files = {
            protocol.assignment_target_path(d): protocol.Assignment(
                d,
                serial,
                (
                    protocol.AssignedModel(
                        "rf", serial, protocol.package_target_path("rf", serial), f"dep-{serial}"
                    ),
                ),
            ).to_bytes()
            for d in ids
        }
        repo.add_targets(files)

    t0 = time.monotonic()
    assign_all(1)
    sign_s = time.monotonic() - t0
    agent = work / "agent"
    TrustClient.install_root(agent / "metadata", repo.root_bytes())
    fetchers: list[CountingFileFetcher] = []

    def cycle() -> dict[str, int]:
        f = CountingFileFetcher(repo_dir)
        fetchers.append(f)
        client = TrustClient(agent / "metadata", agent / "targets", lambda: f.fetcher)
        a = client.cycle().assignment(ids[len(ids) // 2])
        assert a is not None
        return f.counts

    cold = cycle()
    assign_all(2)  # a deployment to every device: every bin changes
    warm = cycle()
    bins = sorted((repo_dir / "metadata").glob("*.bins-*.json"))
    current = {p.name.split(".", 1)[1]: p for p in bins}  # latest version per bin wins
    for p in bins:
        name = p.name.split(".", 1)[1]
        if int(p.name.split(".")[0]) > int(current[name].name.split(".")[0]):
            current[name] = p
    all_in_one = sum(p.stat().st_size for p in current.values())
    return {
        "devices": devices,
        "bins": len(current),
        "sign_all_s": sign_s,
        "cold": cold,
        "warm": warm,
        "all_in_one_role": all_in_one,
    }


# -- report -----------------------------------------------------------------------------------
def print_report(rows: list[Row], meta: dict[str, Any]) -> str:
    out = io.StringIO()
    base: dict[str, float] = {r.model: r.active_s for r in rows if r.n == min(x.n for x in rows)}
    print(
        "| model | size | N | publish s | until all active s | vs N=1 | server egress / size "
        "| naive (N copies) | broker fan-out / (N x size) | failed |",
        file=out,
    )
    print("|---|---|---|---|---|---|---|---|---|---|", file=out)
    for r in rows:
        print(
            f"| {r.model} | {r.size / 1e6:.2f} MB | {r.n} | {r.publish_s:.1f} | {r.active_s:.1f} "
            f"| {r.active_s / base[r.model]:.2f} | {r.egress / r.size:.2f} | {r.n} "
            f"| {r.fanout / (r.n * r.size):.2f} | {r.failed} |",
            file=out,
        )
    print("", file=out)
    w, c = meta["warm"], meta["cold"]
    total_w = sum(v for k, v in w.items() if k != "404")
    total_c = sum(v for k, v in c.items() if k != "404")
    print(
        f"Metadata one agent reads with {meta['devices']:,} devices registered "
        f"({meta['bins']} hash bins; signing all assignments took {meta['sign_all_s']:.1f} s):",
        file=out,
    )
    print("", file=out)
    print(
        "| cycle | timestamp | snapshot | targets | own bin | assignment | total | "
        "all assignments in one role | ratio |",
        file=out,
    )
    print("|---|---|---|---|---|---|---|---|---|", file=out)
    for label, d, tot in (("first (cold)", c, total_c), ("per deployment", w, total_w)):
        print(
            f"| {label} | {d.get('timestamp', 0):,} | {d.get('snapshot', 0):,} "
            f"| {d.get('targets', 0):,} | {d.get('bin', 0):,} | {d.get('assignment', 0):,} "
            f"| {tot:,} B | {meta['all_in_one_role']:,} B "
            f"| {meta['all_in_one_role'] / tot:.0f}x smaller |",
            file=out,
        )
    text = out.getvalue()
    print(text)
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="N = 1, 10 with the small model")
    p.add_argument("--sizes", help="comma-separated N values (default 1,10,50)")
    p.add_argument("--devices", type=int, default=10_000, help="registered devices (metadata)")
    p.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    p.add_argument("--json", type=Path, help="also write the raw figures here")
    args = p.parse_args(argv)
    if args.worker:
        return worker_main(args.worker)
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else [1, 10, 50]
    models = ["small", "big"]
    if args.quick:
        sizes, models = (sizes if args.sizes else [1, 10]), ["small"]
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    with tempfile.TemporaryDirectory(prefix="edgefleet-delivery-", dir=base) as tmp:
        work = Path(tmp)
        print(
            f"agents: up to {max(sizes)}, {AGENTS_PER_WORKER} per worker process; "
            f"{os.cpu_count()} CPUs",
            flush=True,
        )
        t0 = time.monotonic()
        meta = metadata_per_device(work / "meta", args.devices)
        print(f"metadata with {args.devices} devices: {time.monotonic() - t0:.1f} s", flush=True)
        rows = run_deliveries(work / "fleet", sizes, models)
        print_report(rows, meta)
        if args.json:
            args.json.write_text(
                json.dumps({"rows": [r.__dict__ for r in rows], "metadata": meta}, indent=1)
            )
        print(
            f"total {time.monotonic() - t0:.0f} s; {math.ceil(max(sizes) / AGENTS_PER_WORKER)}"
            " worker processes"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
