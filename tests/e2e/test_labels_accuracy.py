"""Labels: the device accepts ground truth for recent predictions and the server learns the
model version's accuracy from confusion counts alone."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pytest

from fleet_server.local_fleet import AgentProcess
from tests.support.fleet import breast_cancer_pipeline, running_server

pytestmark = pytest.mark.slow


def _post(port: int, path: str, doc: object) -> tuple[int, dict[str, object]]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(doc).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_labels_become_accuracy_per_model_version(tmp_path: Path) -> None:
    env = {
        "EDGE_AGENT_HEARTBEAT_S": "0.5",
        "EDGE_AGENT_SUMMARY_WINDOW_S": "1",
        "EDGE_AGENT_SUMMARY_MIN_ROWS": "1",
        "EDGE_AGENT_SUMMARY_K": "1",
    }
    with running_server(tmp_path / "server") as fleet:
        agent = AgentProcess(tmp_path / "agent", env=env)
        agent.enroll(fleet.url, fleet.client.enrollment_token(), "lab-1")
        agent.start()
        try:
            model, sample, rows, sk = breast_cancer_pipeline(tmp_path)
            fleet.client.publish("cancer", model, sample=sample)
            dep = fleet.client.deploy("cancer", 1, devices=["lab-1"])
            assert fleet.client.wait_deployment(dep["id"])["counts"] == {"active": 1}
            port = agent.api_port
            predicted = sk.predict(rows)
            truth = [int(p) if i % 4 else 1 - int(p) for i, p in enumerate(predicted)]  # 75 %
            for i, row in enumerate(rows.tolist()):
                status, _ = _post(
                    port,
                    "/v2/models/cancer/infer",
                    {
                        "id": f"r{i}",
                        "inputs": [
                            {
                                "name": "input",
                                "shape": [1, len(row)],
                                "datatype": "FP32",
                                "data": row,
                            }
                        ],
                    },
                )
                assert status == 200
            status, answer = _post(
                port,
                "/v2/labels",
                {
                    "model": "cancer",
                    "labels": [{"id": f"r{i}", "label": t} for i, t in enumerate(truth)]
                    + [{"id": "never-seen", "label": 0}],
                },
            )
            assert status == 200 and answer == {"matched": len(truth), "unknown": 1}
            assert _post(port, "/v2/labels", {"model": "nope", "labels": []})[0] == 404
            assert _post(port, "/v2/labels", {"bad": 1})[0] == 400

            deadline = time.monotonic() + 60
            acc: dict[str, object] = {}
            while time.monotonic() < deadline:
                acc = fleet.client._call(
                    "GET", "/api/v1/drift/accuracy", params={"model": "cancer", "version": 1}
                )
                if acc.get("labelled") == len(truth):
                    break
                time.sleep(0.5)
            assert acc["labelled"] == len(truth), acc
            assert acc["accuracy"] == pytest.approx(0.75)
        finally:
            agent.stop()
