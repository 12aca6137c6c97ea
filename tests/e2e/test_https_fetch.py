"""The optional HTTPS transport: the same TUF verification, the same refusals."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from fleet_server.local_fleet import AgentProcess
from tests.support.fleet import breast_cancer_pipeline, running_server

pytestmark = pytest.mark.slow


def test_agent_fetching_over_https_installs_and_refuses_a_tampered_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEET_SERVER_SERVE_TUF_OVER_HTTPS", "true")
    with running_server(tmp_path / "server") as fleet:
        agent = AgentProcess(
            tmp_path / "agent", env={"EDGE_AGENT_FETCH_VIA": "https", "EDGE_AGENT_HEARTBEAT_S": "1"}
        )
        agent.enroll(fleet.url, fleet.client.enrollment_token(), "web-1")
        agent.start()
        try:
            model, sample, rows, _ = breast_cancer_pipeline(tmp_path)
            fleet.client.publish("cancer", model, sample=sample)
            dep = fleet.client.wait_deployment(
                fleet.client.deploy("cancer", 1, devices=["web-1"])["id"]
            )
            assert dep["counts"] == {"active": 1}
            assert agent.infer("cancer", rows.tolist())["model_version"] == "1"

            # Path traversal through the file routes finds nothing.
            assert httpx.get(f"{fleet.url}/tuf/metadata/..%2Fkeys%2Ftargets.pem").status_code == 404
            assert httpx.get(f"{fleet.url}/tuf/targets/../keys/targets.pem").status_code == 404

            # Version 2's model file is altered on the server's disk: the agent refuses it.
            fleet.client.publish("cancer", model, sample=sample)
            onnx = next(
                (fleet.data_dir / "tuf" / "targets" / "models" / "cancer" / "2").glob(
                    "*.model.onnx"
                )
            )
            data = bytearray(onnx.read_bytes())
            data[200] ^= 1
            onnx.write_bytes(bytes(data))
            dep = fleet.client.wait_deployment(
                fleet.client.deploy("cancer", 2, devices=["web-1"])["id"]
            )
            assert dep["devices"][0]["status"] == "failed"
            assert dep["devices"][0]["reason"] == "hash_mismatch"
            assert agent.infer("cancer", rows.tolist())["model_version"] == "1"
        finally:
            agent.stop()


def test_https_transport_is_off_by_default(tmp_path: Path) -> None:
    with running_server(tmp_path / "server") as fleet:
        assert httpx.get(f"{fleet.url}/tuf/metadata/timestamp.json").status_code == 404
