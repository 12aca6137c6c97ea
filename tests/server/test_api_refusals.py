"""Bad uploads are refused with a clear 4xx and register nothing; roles are enforced."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fleet_server.auth import create_token
from fleet_server.db import Database
from tests.support.fleet import RunningServer, running_server


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp("server")) as f:
        yield f


def _publish(fleet: RunningServer, payload: bytes, filename: str) -> httpx.Response:
    return httpx.post(
        f"{fleet.url}/api/v1/models/bad/versions",
        headers={"Authorization": f"Bearer {fleet.token}"},
        files={"file": (filename, payload)},
        timeout=60,
    )


def _models(fleet: RunningServer) -> list[object]:
    return fleet.client.models()


def test_file_that_is_not_a_model_is_refused(fleet: RunningServer) -> None:
    r = _publish(fleet, b"this is a shopping list, not a model\n", "notes.txt")
    assert 400 <= r.status_code < 500
    assert r.json()["detail"]
    assert _models(fleet) == []


def test_pickle_is_refused_with_a_local_conversion_hint(fleet: RunningServer) -> None:
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression().fit([[0.0], [1.0]], [0, 1])
    r = _publish(fleet, pickle.dumps(model), "model.pkl")
    assert 400 <= r.status_code < 500
    assert "fleetctl" in r.json()["detail"]
    assert _models(fleet) == []


def test_onnx_with_external_data_is_refused(fleet: RunningServer, tmp_path: Path) -> None:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((4, 2), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "m.onnx"
    onnx.save_model(
        model,
        path,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    r = _publish(fleet, path.read_bytes(), "m.onnx")
    assert 400 <= r.status_code < 500
    assert "external" in r.json()["detail"].lower()
    assert _models(fleet) == []


def test_call_without_token_is_401(fleet: RunningServer) -> None:
    assert httpx.get(f"{fleet.url}/api/v1/models").status_code == 401
    bad = {"Authorization": "Bearer eft_not-a-real-token"}
    assert httpx.get(f"{fleet.url}/api/v1/devices", headers=bad).status_code == 401


def test_viewer_cannot_deploy(fleet: RunningServer) -> None:
    from fleet_server.settings import Settings

    db = Database(Settings.load(fleet.data_dir).database_url)
    with db.begin() as s:
        _, viewer = create_token(s, "viewer", "viewer")
    db.engine.dispose()
    headers = {"Authorization": f"Bearer {viewer}"}
    r = httpx.post(
        f"{fleet.url}/api/v1/deployments",
        headers=headers,
        json={"model": "x", "version": 1, "target": {"devices": ["d"]}},
    )
    assert r.status_code == 403
    assert httpx.get(f"{fleet.url}/api/v1/models", headers=headers).status_code == 200
