"""From a scikit-learn Pipeline to two agents' local inference, over a real broker."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from fleet_server.client import FleetClient
from fleet_server.local_fleet import AgentProcess
from tests.support.fleet import breast_cancer_pipeline, running_server

pytestmark = pytest.mark.slow


def _wait_for(predicate, timeout: float = 60.0, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def _publish_deploy_infer(tmp_path: Path, mqtt_url: str = "", db_url: str = "") -> None:
    with running_server(tmp_path / "server", mqtt_url=mqtt_url, db_url=db_url) as fleet:
        client: FleetClient = fleet.client
        agents = [
            AgentProcess(tmp_path / f"agent-{i}", env={"EDGE_AGENT_HEARTBEAT_S": "1"})
            for i in (1, 2)
        ]
        try:
            for i, agent in enumerate(agents, 1):
                agent.enroll(fleet.url, client.enrollment_token(group="lab"), f"dev-{i}")
                agent.start()
            model_path, sample, rows, model = breast_cancer_pipeline(tmp_path)
            version = client.publish("cancer", model_path, sample=sample)
            assert version["version"] == 1
            dep = client.deploy("cancer", 1, devices=["dev-1", "dev-2"])
            dep = client.wait_deployment(dep["id"], timeout=90)
            assert {d["device"]: d["status"] for d in dep["devices"]} == {
                "dev-1": "active",
                "dev-2": "active",
            }, dep

            want_labels = model.predict(rows)
            want_proba = model.predict_proba(rows)
            for agent in agents:
                answer = agent.infer("cancer", rows.tolist())
                assert answer["model_version"] == "1"
                outs = {o["name"]: o for o in answer["outputs"]}
                np.testing.assert_array_equal(np.asarray(outs["label"]["data"]), want_labels)
                proba = np.asarray(outs["probabilities"]["data"]).reshape(want_proba.shape)
                np.testing.assert_allclose(proba, want_proba, atol=1e-5)

            for device_id in ("dev-1", "dev-2"):
                dev = _wait_for(
                    lambda d=device_id: (lambda x: x if x["models"] == {"cancer": 1} else None)(
                        client.device(d)
                    ),
                    what=f"{device_id} heartbeat with the model version",
                )
                assert dev["last_seen"] is not None
                assert dev["last_heartbeat"]["models"] == {"cancer": 1}
        finally:
            for agent in agents:
                agent.stop()


def test_pipeline_reaches_two_agents_through_embedded_broker(tmp_path: Path) -> None:
    _publish_deploy_infer(tmp_path)


def test_pipeline_reaches_two_agents_through_mosquitto(tmp_path: Path, mosquitto) -> None:  # type: ignore[no-untyped-def]
    _publish_deploy_infer(tmp_path, mqtt_url=mosquitto.url)


@pytest.mark.postgres
def test_pipeline_reaches_two_agents_with_postgresql(
    tmp_path: Path, mosquitto, postgres_url: str
) -> None:  # type: ignore[no-untyped-def]
    _publish_deploy_infer(tmp_path, mqtt_url=mosquitto.url, db_url=postgres_url)
