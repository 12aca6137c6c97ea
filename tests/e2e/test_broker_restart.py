"""A broker that restarts without persistence loses every retained message; the server puts
the repository back and devices still update (to models published before the restart)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet_server.local_fleet import AgentProcess
from tests.support.fleet import breast_cancer_pipeline, running_server
from tests.support.mosquitto import free_port, start_mosquitto

pytestmark = pytest.mark.slow


def test_deploy_after_broker_restart_uses_the_republished_repository(tmp_path: Path) -> None:
    port = free_port()
    broker = start_mosquitto(tmp_path / "mq", port=port)
    try:
        with running_server(tmp_path / "server", mqtt_url=broker.url) as fleet:
            model, sample, rows, _ = breast_cancer_pipeline(tmp_path)
            fleet.client.publish("cancer", model, sample=sample)  # before the restart
            broker.stop()
            broker = start_mosquitto(tmp_path / "mq", port=port)  # empty: persistence off
            agent = AgentProcess(tmp_path / "agent", env={"EDGE_AGENT_HEARTBEAT_S": "1"})
            agent.enroll(fleet.url, fleet.client.enrollment_token(), "after-restart")
            agent.start()
            try:
                dep = fleet.client.deploy("cancer", 1, devices=["after-restart"])
                dep = fleet.client.wait_deployment(dep["id"], timeout=90)
                assert dep["counts"] == {"active": 1}, dep
                assert agent.infer("cancer", rows.tolist())["model_version"] == "1"
            finally:
                agent.stop()
    finally:
        broker.stop()
