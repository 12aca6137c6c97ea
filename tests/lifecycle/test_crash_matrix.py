"""SIGKILL a real agent on entering each update state; the restarted agent must end with
exactly one complete, verified version active and the deployment reported as it ended.

All cases run side by side (one device each) against one fleet server: v1 is deployed to
every device, each agent is restarted with its seams, v2 is deployed to each device, the
agent kills itself with SIGKILL on entering the state, and is restarted without seams.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edge_agent.lifecycle import MAX_ATTEMPTS
from tests.lifecycle.conftest import Pipeline
from tests.lifecycle.support import Device, assert_one_complete_version, device_status, wait_for
from tests.support.fleet import RunningServer

MODEL = "crash"


@dataclass(frozen=True)
class Case:
    crash_in: str
    fail_in: str = ""  # EDGE_AGENT_TEST_FAIL_IN: the state that fails after its work
    status: str = "active"  # what GET /api/v1/deployments/{id} ends with
    version: int = 2  # the version serving afterwards
    reason: str = ""

    @property
    def device(self) -> str:
        return f"crash-{self.crash_in.replace('_', '-')}"


CASES = [
    Case("fetching"),
    Case("verifying"),
    Case("staging"),
    Case("warming"),
    Case("switching"),
    Case("committed"),
    # switching fails with v2 swapped in; the agent dies while putting v1 back
    Case("rolling_back", fail_in="switching", status="rolled_back", version=1, reason="internal"),
    # the health gate fails; the agent dies before reporting it
    Case("failed", fail_in="warming", status="failed", version=1, reason="internal"),
]


@dataclass
class Outcome:
    exit_code: int
    deployment: str
    status: dict[str, Any]
    answer: dict[str, Any]
    device: Device


@pytest.fixture(scope="module")
def matrix(
    fleet: RunningServer, pipeline: Pipeline, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Outcome]]:
    client = fleet.client
    root = tmp_path_factory.mktemp("crash")
    assert client.publish(MODEL, pipeline.model, sample=pipeline.sample)["version"] == 1
    assert client.publish(MODEL, pipeline.model, sample=pipeline.sample)["version"] == 2
    with ThreadPoolExecutor(len(CASES)) as pool:
        devices = list(pool.map(lambda c: Device.enroll(fleet, root, c.device), CASES))
    try:
        for dev in devices:
            dev.start()
        dep = client.deploy(MODEL, 1, devices=[d.device_id for d in devices])
        first = client.wait_deployment(dep["id"], timeout=90, poll=0.2)
        assert {d["status"] for d in first["devices"]} == {"active"}, first
        for dev in devices:
            dev.stop()
        for case, dev in zip(CASES, devices, strict=True):
            dev.start(EDGE_AGENT_TEST_CRASH_IN=case.crash_in, EDGE_AGENT_TEST_FAIL_IN=case.fail_in)
        for dev in devices:  # v1 serves before the update
            assert dev.infer(MODEL, pipeline.row)["model_version"] == "1"
        deps = {dev.device_id: client.deploy(MODEL, 2, devices=[dev.device_id]) for dev in devices}
        codes = {dev.device_id: dev.wait_exit(60) for dev in devices}
        for dev in devices:
            dev.start()  # no seams
        outcomes = {}
        for case, dev in zip(CASES, devices, strict=True):
            dep_id = deps[dev.device_id]["id"]
            status = device_status(client, dep_id, dev.device_id, 90, dev)
            wait_for(dev.settled, 30, f"{dev.device_id}: no update step left")
            outcomes[case.crash_in] = Outcome(
                codes[dev.device_id],
                deps[dev.device_id]["id"],
                status,
                dev.infer(MODEL, pipeline.row),
                dev,
            )
        yield outcomes
    finally:
        for dev in devices:
            dev.stop()


@pytest.mark.parametrize("case", CASES, ids=[c.crash_in for c in CASES])
def test_sigkill_on_entering_state_ends_with_one_complete_version(
    matrix: dict[str, Outcome], case: Case
) -> None:
    out = matrix[case.crash_in]
    dev = out.device
    assert out.exit_code == -signal.SIGKILL, f"the agent did not die in {case.crash_in}"
    assert out.status["status"] == case.status, (out.status, dev.log_tail())
    assert out.status["reason"] == case.reason, out.status
    assert out.answer["model_version"] == str(case.version)
    assert_one_complete_version(dev, MODEL, case.version)
    # a version that did not make it leaves no files behind
    assert dev.versions_on_disk(MODEL) == ([1, 2] if case.version == 2 else [1])
    # the ended deployment is remembered: a later assignment listing it does not retry it
    assert dev.state()["concluded"][MODEL] == out.deployment


def test_crash_loop_in_one_state_gives_up_and_keeps_the_old_version(
    fleet: RunningServer, pipeline: Pipeline, tmp_path: Path
) -> None:
    """A state that kills the agent every time is abandoned after MAX_ATTEMPTS restarts."""
    client = fleet.client
    dev = Device.enroll(fleet, tmp_path, "crash-loop")
    try:
        dev.start()
        first = client.deploy(MODEL, 1, devices=[dev.device_id])
        assert device_status(client, first["id"], dev.device_id)["status"] == "active"
        dev.stop()
        dev.start(EDGE_AGENT_TEST_CRASH_IN="warming")
        dep = client.deploy(MODEL, 2, devices=[dev.device_id])
        kills = 0
        code = dev.wait_exit(60)
        while True:  # restart with the seam still set, as a boot loop would
            assert code == -signal.SIGKILL, dev.log_tail()
            kills += 1
            assert kills <= MAX_ATTEMPTS + 1, "the crash loop was not stopped"
            dev.start(EDGE_AGENT_TEST_CRASH_IN="warming")
            how = wait_for(
                lambda: "died" if not dev.alive else ("settled" if dev.settled() else None),
                60,
                "the agent to die again or give up",
            )
            if how == "settled":
                break
            code = dev.wait_exit(5)
        assert kills == MAX_ATTEMPTS + 1
        status = device_status(client, dep["id"], dev.device_id)
        assert (status["status"], status["reason"]) == ("failed", "internal"), status
        assert "interrupted attempts" in status["message"]
        assert dev.infer(MODEL, pipeline.row)["model_version"] == "1"
        assert_one_complete_version(dev, MODEL, 1)
        assert dev.versions_on_disk(MODEL) == [1]
    finally:
        dev.stop()
