"""Real models for the serving tests: scikit-learn -> skl2onnx -> bytes on disk + package."""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from edge_agent.protocol import ModelPackage, TensorSpec

N_FEATURES = 4


@dataclass(frozen=True)
class BuiltModel:
    path: Path
    package: ModelPackage
    X: np.ndarray  # float32 rows for tests

    def reference(self, X: np.ndarray) -> dict[str, np.ndarray]:
        """onnxruntime's own outputs for ``X`` (plain session, no agent code)."""
        sess = ort.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        return dict(zip(names, sess.run(None, {"X": X}), strict=True))


def oip_tensor(arr: np.ndarray) -> dict[str, Any]:
    dt = {"float32": "FP32", "float64": "FP64", "int64": "INT64", "object": "BYTES"}[
        str(arr.dtype)
    ]
    return {"datatype": dt, "shape": list(arr.shape), "data": arr.ravel().tolist()}


def write_model(
    directory: Path, name: str, version: int, onnx_bytes: bytes, X: np.ndarray | None = None,
    *, tolerance: float = 1e-4, latency_budget_ms: float = 1000.0, selftest: Any = None,
) -> tuple[Path, ModelPackage]:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}-{version}.onnx"
    path.write_bytes(onnx_bytes)
    if selftest is None and X is not None:
        sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
        outs = sess.run(None, {"X": X})
        selftest = {
            "inputs": {"X": oip_tensor(X)},
            "outputs": {
                o.name: oip_tensor(v) for o, v in zip(sess.get_outputs(), outs, strict=True)
            },
        }
    package = ModelPackage(
        name=name, version=version, model_target=f"models/{name}/{version}/model.onnx",
        model_sha256=hashlib.sha256(onnx_bytes).hexdigest(),
        inputs=(), outputs=(), opset=17, ort_min="1.17",
        selftest=selftest or {}, tolerance=tolerance, latency_budget_ms=latency_budget_ms,
    )
    return path, package


def _train(seed: int) -> tuple[Any, np.ndarray]:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    X = rng.normal(size=(300, N_FEATURES)).astype(np.float32)
    y = (X[:, 0] + 0.5 * X[:, 1] - X[:, 2] > 0).astype(np.int64) + (X[:, 3] > 1).astype(np.int64)
    return LogisticRegression(C=0.1 + seed, max_iter=500).fit(X, y), X


def _to_onnx(model: Any, X: np.ndarray) -> bytes:
    from skl2onnx import to_onnx

    onx = to_onnx(model, X[:1], options={"zipmap": False}, target_opset=17)
    return bytes(onx.SerializeToString())


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def clf_v1(models_dir: Path) -> BuiltModel:
    model, X = _train(1)
    path, package = write_model(models_dir, "clf", 1, _to_onnx(model, X), X[:5])
    package = replace(
        package,
        inputs=(TensorSpec("X", "FP32", (-1, N_FEATURES)),),
        outputs=(TensorSpec("label", "INT64", (-1,)), TensorSpec("probabilities", "FP32", (-1, 3))),
    )
    return BuiltModel(path, package, X[:20])


@pytest.fixture(scope="session")
def clf_v2(models_dir: Path) -> BuiltModel:
    model, X = _train(2)
    path, package = write_model(models_dir, "clf", 2, _to_onnx(model, X), X[:5])
    return BuiltModel(path, package, X[:20])


@pytest.fixture(scope="session")
def huge_memory_model(models_dir: Path) -> tuple[Path, ModelPackage]:
    """ConstantOfShape whose shape comes from the request: [5e9] floats asks for 20 GB."""
    import onnx
    from onnx import TensorProto, helper

    one = helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])
    node = helper.make_node("ConstantOfShape", ["n"], ["y"], value=one)
    graph = helper.make_graph(
        [node], "huge", [helper.make_tensor_value_info("n", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    selftest = {
        "inputs": {"n": {"datatype": "INT64", "shape": [1], "data": [5_000_000_000]}},
        "outputs": {},
    }
    return write_model(models_dir, "huge", 1, m.SerializeToString(), selftest=selftest)


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = str(path)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def request(
    conn: http.client.HTTPConnection, method: str, path: str, body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    conn.request(method, path, body=data, headers=headers or {})
    resp = conn.getresponse()
    raw = resp.read()
    return resp.status, json.loads(raw) if raw else None


def infer_body(X: np.ndarray, name: str = "X") -> dict[str, Any]:
    return {"inputs": [{"name": name, **oip_tensor(X)}]}


@pytest.fixture
def tcp_factory() -> Iterator[Any]:
    conns: list[http.client.HTTPConnection] = []

    def make(port: int) -> http.client.HTTPConnection:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conns.append(c)
        return c

    yield make
    for c in conns:
        c.close()
