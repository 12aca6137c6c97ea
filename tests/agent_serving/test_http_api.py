"""The local OIP REST API over TCP and the Unix socket, with real models and onnxruntime."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.http_api import ApiServer, start_api
from edge_agent.protocol import ModelPackage
from edge_agent.runtime import ModelRegistry, load_model
from tests.agent_serving.conftest import BuiltModel, UnixHTTPConnection, infer_body, request

Conn = Callable[[int], http.client.HTTPConnection]


@pytest.fixture
def registry(clf_v1: BuiltModel) -> ModelRegistry:
    reg = ModelRegistry()
    reg.swap(load_model(clf_v1.path, clf_v1.package))
    return reg


@pytest.fixture
def calls() -> list[tuple[str, float]]:
    return []


@pytest.fixture
def server(
    registry: ModelRegistry, tmp_path: Path, calls: list[tuple[str, float]]
) -> Iterator[ApiServer]:
    def hook(name: str, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray],
             seconds: float, request_id: str | None) -> None:
        calls.append((name, seconds))

    api = start_api(registry, port=0, unix_socket=tmp_path / "oip.sock", on_infer=hook,
                    max_body_bytes=64 * 1024)
    yield api
    api.close()


def _assert_same(doc: dict[str, Any], want: dict[str, np.ndarray]) -> None:
    outs = {o["name"]: o for o in doc["outputs"]}
    assert set(outs) == set(want)
    for name, arr in want.items():
        assert outs[name]["shape"] == list(arr.shape)
        got = np.asarray(outs[name]["data"], arr.dtype).reshape(arr.shape)
        np.testing.assert_array_equal(got, arr)


def test_infer_over_tcp_equals_onnxruntime(server: ApiServer, tcp_factory: Conn,
                                            clf_v1: BuiltModel, calls: list[Any]) -> None:
    conn = tcp_factory(server.port)
    body = infer_body(clf_v1.X) | {"id": "req-7"}
    status, doc = request(conn, "POST", "/v2/models/clf/infer", body)
    assert status == 200, doc
    assert (doc["model_name"], doc["model_version"], doc["id"]) == ("clf", "1", "req-7")
    _assert_same(doc, clf_v1.reference(clf_v1.X))
    # keep-alive: the same connection answers again
    status, doc = request(conn, "POST", "/v2/models/clf/versions/1/infer", infer_body(clf_v1.X[:1]))
    assert status == 200 and doc["model_version"] == "1"
    deadline = time.monotonic() + 5
    while len(calls) < 2 and time.monotonic() < deadline:  # the hook runs after the answer
        time.sleep(0.01)
    assert [c[0] for c in calls] == ["clf", "clf"] and all(c[1] > 0 for c in calls)


def test_infer_over_the_unix_socket_equals_onnxruntime(server: ApiServer, clf_v1: BuiltModel,
                                                      tmp_path: Path) -> None:
    assert (tmp_path / "oip.sock").stat().st_mode & 0o777 == 0o660
    conn = UnixHTTPConnection(tmp_path / "oip.sock")
    try:
        status, doc = request(conn, "POST", "/v2/models/clf/infer", infer_body(clf_v1.X))
        assert status == 200, doc
        _assert_same(doc, clf_v1.reference(clf_v1.X))
        assert request(conn, "GET", "/v2/health/ready") == (200, {"ready": True})
    finally:
        conn.close()


def test_requested_outputs_only(server: ApiServer, tcp_factory: Conn, clf_v1: BuiltModel) -> None:
    body = infer_body(clf_v1.X[:2]) | {"outputs": [{"name": "label"}]}
    status, doc = request(tcp_factory(server.port), "POST", "/v2/models/clf/infer", body)
    assert status == 200 and [o["name"] for o in doc["outputs"]] == ["label"]


def test_metadata_and_readiness(
    server: ApiServer, tcp_factory: Conn, registry: ModelRegistry
) -> None:
    conn = tcp_factory(server.port)
    assert request(conn, "GET", "/v2/health/live") == (200, {"live": True})
    assert request(conn, "GET", "/v2/health/ready") == (200, {"ready": True})
    status, meta = request(conn, "GET", "/v2")
    assert status == 200 and meta["name"] == "edgefleet-edge-agent"
    status, meta = request(conn, "GET", "/v2/models/clf")
    assert status == 200
    assert meta["name"] == "clf" and meta["versions"] == ["1"] and meta["platform"] == "onnxruntime"
    assert meta["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [-1, 4]}]
    assert {o["name"] for o in meta["outputs"]} == {"label", "probabilities"}
    assert request(conn, "GET", "/v2/models/clf/ready") == (200, {"name": "clf", "ready": True})
    assert request(conn, "GET", "/v2/models/clf/versions/1/ready")[0] == 200
    assert request(conn, "GET", "/v2/models/clf/versions/9/ready")[0] == 404
    assert request(conn, "GET", "/v2/models/nope/ready")[0] == 404
    registry.remove("clf")
    assert request(conn, "GET", "/v2/health/ready") == (503, {"ready": False})
    assert request(conn, "GET", "/v2/health/live")[0] == 200


_ONE_ROW = {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/v2/models/clf/infer", {"inputs": [{"name": "X", "shape": [1, 3], "datatype": "FP32",
                                              "data": [1, 2, 3]}]}, 400, "dimension 1 must be 4"),
        ("/v2/models/clf/infer", {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32",
                                              "data": [1, 2, 3]}]}, 400, "needs 4 values"),
        ("/v2/models/clf/infer", {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32",
                                              "data": ["a", "b", "c", "d"]}]}, 400, "not FP32"),
        ("/v2/models/clf/infer", {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "INT64",
                                              "data": [1.5, 2, 3, 4]}]}, 400, "not INT64"),
        ("/v2/models/clf/infer", {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP99",
                                              "data": [1, 2, 3, 4]}]}, 400, "datatype 'FP99'"),
        ("/v2/models/clf/infer", {"inputs": [{"name": "Z", "shape": [1, 4], "datatype": "FP32",
                                              "data": [1, 2, 3, 4]}]}, 400, "unknown ['Z']"),
        ("/v2/models/clf/infer", {"inputs": []}, 400, "non-empty 'inputs'"),
        ("/v2/models/clf/infer", b"{not json", 400, "not valid JSON"),
        ("/v2/models/nope/infer", _ONE_ROW, 404, "no model named 'nope'"),
        ("/v2/models/clf/versions/7/infer", _ONE_ROW, 404, "version 7 is not loaded"),
        ("/v2/nothing", {}, 404, "no route"),
    ],
)
def test_bad_requests_get_4xx_with_a_clear_message(
    server: ApiServer, tcp_factory: Conn, path: str, body: Any, status: int, message: str,
    clf_v1: BuiltModel,
) -> None:
    conn = tcp_factory(server.port)
    got, doc = request(conn, "POST", path, body)
    assert got == status and message in doc["error"], doc
    # the connection and the server stay usable
    assert request(conn, "POST", "/v2/models/clf/infer", infer_body(clf_v1.X[:1]))[0] == 200


def test_oversized_body_is_refused_with_413(server: ApiServer, tcp_factory: Conn,
                                           clf_v1: BuiltModel) -> None:
    big = infer_body(np.zeros((5000, 4), np.float32))
    status, doc = request(tcp_factory(server.port), "POST", "/v2/models/clf/infer", big)
    assert status == 413 and "exceeds the limit" in doc["error"]
    # announced but never sent: refused before reading a byte
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(b"POST /v2/models/clf/infer HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Length: 999999999\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 413 ")
    status, _ = request(tcp_factory(server.port), "POST", "/v2/models/clf/infer",
                        infer_body(clf_v1.X[:1]))
    assert status == 200


def test_post_without_length_and_wrong_methods(server: ApiServer, tcp_factory: Conn) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(b"POST /v2/models/clf/infer HTTP/1.1\r\nHost: x\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 411 ")
    assert request(tcp_factory(server.port), "DELETE", "/v2/models/clf")[0] == 405


def test_a_failing_telemetry_hook_never_breaks_a_request(
    registry: ModelRegistry, tcp_factory: Conn, clf_v1: BuiltModel
) -> None:
    def hook(*args: Any) -> None:
        raise RuntimeError("telemetry is down")

    with start_api(registry, port=0, on_infer=hook) as api:
        conn = tcp_factory(api.port)
        for _ in range(3):
            assert request(conn, "POST", "/v2/models/clf/infer", infer_body(clf_v1.X[:1]))[0] == 200


def test_huge_memory_model_fails_its_request_and_the_server_still_answers(
    server: ApiServer, registry: ModelRegistry, tcp_factory: Conn, clf_v1: BuiltModel,
    huge_memory_model: tuple[Path, ModelPackage],
) -> None:
    registry.swap(load_model(*huge_memory_model))
    conn = tcp_factory(server.port)
    body = {"inputs": [{"name": "n", "shape": [1], "datatype": "INT64", "data": [5_000_000_000]}]}
    status, doc = request(conn, "POST", "/v2/models/huge/infer", body)
    assert status == 500 and "huge:1 failed" in doc["error"]
    assert request(conn, "GET", "/v2/health/live")[0] == 200
    status, doc = request(conn, "POST", "/v2/models/clf/infer", infer_body(clf_v1.X[:1]))
    assert status == 200


def test_extra_routes(registry: ModelRegistry, tcp_factory: Conn) -> None:
    routes = {("GET", "/agent/status"): lambda body: (200, {"state": "idle"})}
    with start_api(registry, port=0, extra_routes=routes) as api:
        assert request(tcp_factory(api.port), "GET", "/agent/status") == (200, {"state": "idle"})


def test_connection_flood_is_bounded(registry: ModelRegistry) -> None:
    with start_api(registry, port=0, max_connections=2) as api:
        held = [socket.create_connection(("127.0.0.1", api.port), timeout=5) for _ in range(2)]
        try:
            for s in held:  # make sure both are being served before the third arrives
                s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
                assert s.recv(4096).startswith(b"HTTP/1.1 200 ")
            with socket.create_connection(("127.0.0.1", api.port), timeout=5) as third:
                assert third.recv(4096).startswith(b"HTTP/1.1 503 ")
        finally:
            for s in held:
                s.close()


def test_zero_downtime_swap_under_load(
    server: ApiServer, registry: ModelRegistry, clf_v1: BuiltModel, clf_v2: BuiltModel,
    tmp_path: Path,
) -> None:
    v1 = load_model(clf_v1.path, clf_v1.package)
    v2 = load_model(clf_v2.path, clf_v2.package)
    expected = {
        "1": clf_v1.reference(clf_v1.X[:3])["label"].tolist(),
        "2": clf_v2.reference(clf_v1.X[:3])["label"].tolist(),
    }
    body = json.dumps(infer_body(clf_v1.X[:3])).encode()
    stop = threading.Event()
    seen: dict[str, int] = {"1": 0, "2": 0}
    failures: list[str] = []
    lock = threading.Lock()

    def hammer(unix: bool) -> None:
        conn: http.client.HTTPConnection = (
            UnixHTTPConnection(tmp_path / "oip.sock") if unix
            else http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        )
        try:
            while not stop.is_set():
                try:
                    status, doc = request(conn, "POST", "/v2/models/clf/infer", body)
                    version = doc.get("model_version")
                    labels = next(o["data"] for o in doc["outputs"] if o["name"] == "label")
                    ok = status == 200 and labels == expected.get(version)
                except Exception as e:  # counted as a failed request
                    failures.append(repr(e))
                    continue
                with lock:
                    if ok:
                        seen[version] += 1
                    else:
                        failures.append(f"{status} {doc}")
        finally:
            conn.close()

    threads = [threading.Thread(target=hammer, args=(i % 2 == 1,)) for i in range(4)]
    for t in threads:
        t.start()
    for i in range(60):
        registry.swap(v2 if i % 2 == 0 else v1)
        threading.Event().wait(0.01)
    stop.set()
    for t in threads:
        t.join()
    assert failures == []
    assert seen["1"] + seen["2"] >= 100  # requests really overlapped the 60 swaps
    assert seen["1"] > 0 and seen["2"] > 0


def test_malformed_http_is_refused_and_expect_continue_is_checked_first(
    server: ApiServer, clf_v1: BuiltModel
) -> None:
    def exchange(raw: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
            s.sendall(raw)
            return s.recv(65536)

    assert exchange(b"NONSENSE\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert exchange(b"GET /v2 HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
                    ).startswith(b"HTTP/1.1 400 ")
    assert exchange(b"POST /v2/models/clf/infer HTTP/1.1\r\nExpect: 100-continue\r\n"
                    b"Content-Length: 999999999\r\n\r\n").startswith(b"HTTP/1.1 413 ")
    body = json.dumps(infer_body(clf_v1.X[:1])).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(b"POST /v2/models/clf/infer HTTP/1.1\r\nExpect: 100-continue\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body))
        assert s.recv(4096) == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(body)
        assert s.recv(65536).startswith(b"HTTP/1.1 200 ")
    # HTTP/1.0 without keep-alive: answered, then closed
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(b"GET /v2/health/live HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        assert data.startswith(b"HTTP/1.1 200 ") and b"Connection: close" in data
