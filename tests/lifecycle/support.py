"""Helpers for the lifecycle tests: devices as real agent processes, their saved state,
a model whose self-test cannot pass on a device, a Mosquitto on a fixed port."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from fleet_server.client import FleetClient
from fleet_server.local_fleet import AgentProcess
from tests.support.fleet import RunningServer
from tests.support.mosquitto import Mosquitto, start_mosquitto

T = TypeVar("T")
BASE_ENV = {"EDGE_AGENT_HEARTBEAT_S": "1"}
SEAMS = ("EDGE_AGENT_TEST_CRASH_IN", "EDGE_AGENT_TEST_FAIL_IN")


def wait_for(predicate: Callable[[], T | None], timeout: float = 60.0, what: str = "") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


@dataclass
class Device:
    """One enrolled device: a data dir, and the agent process currently running on it."""

    device_id: str
    data_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    process: AgentProcess | None = None

    @classmethod
    def enroll(cls, fleet: RunningServer, root: Path, device_id: str, **env: str) -> Device:
        dev = cls(device_id, root / device_id, {**BASE_ENV, **env})
        AgentProcess(dev.data_dir, env=dev._clean_env()).enroll(
            fleet.url, fleet.client.enrollment_token(), device_id
        )
        return dev

    def _clean_env(self, **extra: str) -> dict[str, str]:
        env = {**self.env, **extra}
        for seam in SEAMS:  # never inherit a seam from the test runner's environment
            env.setdefault(seam, "")
        return env

    def start(self, **seams: str) -> AgentProcess:
        """Start the agent; ``seams`` are extra environment variables for this run only."""
        self.process = AgentProcess(self.data_dir, env=self._clean_env(**seams))
        self.process.start()
        return self.process

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def wait_exit(self, timeout: float = 60.0) -> int:
        assert self.process is not None and self.process.process is not None
        return self.process.process.wait(timeout)

    @property
    def alive(self) -> bool:
        p = self.process.process if self.process else None
        return p is not None and p.poll() is None

    def state(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads((self.data_dir / "state.json").read_text())
        return result

    def infer(self, model: str, rows: list[list[float]]) -> dict[str, Any]:
        assert self.process is not None
        return self.process.infer(model, rows)

    def log_tail(self) -> str:
        return (self.data_dir.parent / f"{self.data_dir.name}.log").read_text()[-3000:]

    def versions_on_disk(self, model: str) -> list[int]:
        d = self.data_dir / "models" / model
        return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.exists() else []

    def settled(self) -> dict[str, Any] | None:
        """The saved state once no update step is left in it."""
        try:
            state = self.state()
        except (OSError, ValueError):
            return None
        return state if state.get("step") is None else None


def assert_one_complete_version(dev: Device, model: str, version: int) -> None:
    """state.json names ``version``, whose files are complete and match the signed digest."""
    state = dev.state()
    assert state["step"] is None, state
    assert state["active"].get(model) == version, state
    d = dev.data_dir / "models" / model / str(version)
    package = json.loads((d / "package.json").read_text())
    digest = hashlib.sha256((d / "model.onnx").read_bytes()).hexdigest()
    assert digest == package["model_sha256"], "the active model file is not the signed one"
    leftovers = [p.name for p in d.parent.rglob(".*")]
    assert not leftovers, f"half-written files left: {leftovers}"


def deploy_and_wait(
    client: FleetClient, model: str, version: int, device: str, timeout: float = 90.0
) -> dict[str, Any]:
    dep = client.deploy(model, version, devices=[device])
    return device_status(client, dep["id"], device, timeout)


def device_status(
    client: FleetClient, dep_id: str, device: str, timeout: float = 90.0, dev: Device | None = None
) -> dict[str, Any]:
    try:
        dep = client.wait_deployment(dep_id, timeout=timeout, poll=0.2)
    except TimeoutError as e:
        raise AssertionError(f"{device}: {e}\n{dev.log_tail() if dev else ''}") from e
    row: dict[str, Any] = next(d for d in dep["devices"] if d["device"] == device)
    return row


def random_onnx_model(features: int) -> bytes:
    """An ONNX model whose outputs change on every run (RandomUniformLike): the self-test
    outputs the server records cannot be reproduced on a device."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, features])
    y = helper.make_tensor_value_info("score", TensorProto.FLOAT, [None, features])
    nodes = [
        helper.make_node("RandomUniformLike", ["input"], ["noise"], dtype=TensorProto.FLOAT),
        helper.make_node("Add", ["input", "noise"], ["score"]),
    ]
    graph = helper.make_graph(nodes, "noisy", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def start_mosquitto_on(workdir: Path, port: int) -> Mosquitto:
    """Mosquitto with the project's dev config on ``port`` (a restart keeps the address)."""
    return start_mosquitto(workdir, port=port)
