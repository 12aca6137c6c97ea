"""Inference latency and throughput: the agent's serving paths against raw onnxruntime.

Same models, same rows, one run. For each model (20 features): raw ``session.run``,
scikit-learn ``predict_proba``, the agent's in-process API, and its REST API through a
keep-alive ``http.client`` and through a raw socket that sends pre-encoded requests.
Single-row p50/p99 in microseconds and batch-1000 throughput; ratios against raw
onnxruntime. Optionally MLServer (in its own venv) serving the same scikit-learn model.

    .venv/bin/python bench/inference.py [--quick] [--mlserver-venv /work/mlserver-venv]
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_agent.http_api import start_api
from edge_agent.local import LocalInference
from edge_agent.protocol import ModelPackage
from edge_agent.runtime import ModelRegistry, load_model

N_FEATURES = 20
BATCH = 1000


# -- models -----------------------------------------------------------------------------------
def train_models(quick: bool) -> tuple[dict[str, Any], np.ndarray]:
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    rng = np.random.default_rng(0)
    X = rng.normal(size=(5000, N_FEATURES)).astype(np.float32)
    y = ((X[:, 0] + X[:, 1] * X[:, 2] - X[:, 3] ** 2 + 0.3 * rng.normal(size=5000)) > 0)
    y = y.astype(np.int64)
    models = {
        "logreg": LogisticRegression(max_iter=1000),
        "random_forest": RandomForestClassifier(100, max_depth=10, random_state=0, n_jobs=1),
        "hist_gb": HistGradientBoostingClassifier(max_iter=100, random_state=0),
        "mlp": MLPClassifier((64, 64), max_iter=300 if not quick else 50, random_state=0),
    }
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for m in models.values():
            m.fit(X, y)
    return models, X


def to_onnx_bytes(model: Any) -> bytes:
    from skl2onnx import to_onnx

    onx = to_onnx(model, np.zeros((1, N_FEATURES), np.float32), options={"zipmap": False},
                  target_opset={"": 17, "ai.onnx.ml": 3})
    return bytes(onx.SerializeToString())


# -- measuring --------------------------------------------------------------------------------
def timings(fn: Callable[[], Any], max_n: int, budget_s: float) -> np.ndarray:
    for _ in range(min(20, max_n)):
        fn()
    out = []
    deadline = time.perf_counter() + budget_s
    for _ in range(max_n):
        t = time.perf_counter_ns()
        fn()
        out.append(time.perf_counter_ns() - t)
        if len(out) >= 30 and time.perf_counter() > deadline:
            break
    return np.asarray(out, np.float64) / 1000.0  # microseconds


def summary(single: np.ndarray, batch: np.ndarray) -> dict[str, float]:
    return {
        "p50": float(np.percentile(single, 50)),
        "p99": float(np.percentile(single, 99)),
        "rows_s": BATCH / (float(np.median(batch)) / 1e6),
    }


class RawClient:
    """Keep-alive HTTP over a plain socket: pre-encoded request, minimal response parsing."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    @staticmethod
    def encode(path: str, body: bytes) -> bytes:
        return (
            f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body

    def call(self, request: bytes) -> bytes:
        self.sock.sendall(request)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            buf += chunk
        head, _, body = buf.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(head.decode(errors="replace") + body.decode(errors="replace"))
        length = 0
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v)
        while len(body) < length:
            body += self.sock.recv(65536)
        return body

    def close(self) -> None:
        self.sock.close()


def oip_body(X: np.ndarray, outputs: list[str] | None = None) -> bytes:
    doc: dict[str, Any] = {"inputs": [{"name": "X", "shape": list(X.shape), "datatype": "FP32",
                                       "data": X.ravel().tolist()}]}
    if outputs:
        doc["outputs"] = [{"name": n} for n in outputs]
    return json.dumps(doc).encode()


# -- MLServer ---------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_mlserver(venv: Path, model: Any, X: np.ndarray, parallel_workers: int | None,
                 budget_s: float) -> dict[str, float] | str:
    exe = venv / "bin" / "mlserver"
    if not exe.exists():
        return f"not installed ({exe} missing)"
    import joblib

    work = Path(tempfile.mkdtemp(prefix="mlserver-bench-"))
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    settings: dict[str, Any] = {"host": "127.0.0.1", "http_port": http_port,
                                "grpc_port": grpc_port, "metrics_port": metrics_port}
    if parallel_workers is not None:
        settings["parallel_workers"] = parallel_workers
    (work / "settings.json").write_text(json.dumps(settings))
    mdir = work / "clf"
    mdir.mkdir()
    joblib.dump(model, mdir / "model.joblib")
    (mdir / "model-settings.json").write_text(json.dumps({
        "name": "clf", "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib", "version": "v1"},
    }))
    log = open(work / "mlserver.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([str(exe), "start", str(work)], stdout=log, stderr=subprocess.STDOUT,
                            cwd=work, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                tail = (work / "mlserver.log").read_text()[-500:]
                return f"exited with {proc.returncode}: {tail}"
            try:
                c = http.client.HTTPConnection("127.0.0.1", http_port, timeout=2)
                c.request("GET", "/v2/models/clf/ready")
                if c.getresponse().status == 200:
                    c.close()
                    break
                c.close()
            except OSError:
                pass
            if time.monotonic() > deadline:
                return "did not become ready in 90 s"
            time.sleep(0.2)
        client = RawClient("127.0.0.1", http_port)
        req = RawClient.encode("/v2/models/clf/infer", oip_body(X[:1], ["predict_proba"]))
        json.loads(client.call(req))  # check it answers
        single = timings(lambda: client.call(req), 3000, budget_s)
        breq = RawClient.encode("/v2/models/clf/infer", oip_body(X[:BATCH], ["predict_proba"]))
        batch = timings(lambda: client.call(breq), 30, budget_s)
        client.close()
        return summary(single, batch)
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
        log.close()
        shutil.rmtree(work, ignore_errors=True)


# -- the agent's REST server in its own process (no GIL shared with the clients) -------------
def serve(directory: Path) -> None:
    registry = ModelRegistry()
    for path in sorted(directory.glob("*.onnx")):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        registry.swap(load_model(path, ModelPackage(path.stem, 1, "t", digest, (), (), 17, "1")))
    api = start_api(registry, port=0)
    print(api.port, flush=True)
    sys.stdin.read()  # until the parent closes our stdin
    api.close()


def start_server(directory: Path) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(directory)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


ROUNDS = 5  # paths take turns, so load from elsewhere on the machine hits them alike


def bench_model(name: str, model: Any, path: Path, X: np.ndarray, registry: ModelRegistry,
                port: int, budget: float) -> dict[str, dict[str, float]]:
    import onnxruntime as ort

    row, rows = X[:1].copy(), X[:BATCH].copy()
    data = path.read_bytes()
    package = ModelPackage(name, 1, "t", hashlib.sha256(data).hexdigest(), (), (), 17, "1")
    registry.swap(load_model(path, package))
    local = LocalInference(registry)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    raw = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(  # all paths answer the same
        local.infer(name, {"X": row}).outputs["probabilities"], raw.run(None, {"X": row})[1],
        rtol=1e-6)
    conn = http.client.HTTPConnection("127.0.0.1", port)
    body1, bodyb = oip_body(row), oip_body(rows)

    def via_http(body: bytes) -> bytes:
        conn.request("POST", f"/v2/models/{name}/infer", body,
                     {"Content-Type": "application/json"})
        resp = conn.getresponse()
        out = resp.read()
        assert resp.status == 200, out
        return out

    client = RawClient("127.0.0.1", port)
    raw1 = RawClient.encode(f"/v2/models/{name}/infer", body1)
    rawb = RawClient.encode(f"/v2/models/{name}/infer", bodyb)
    paths: dict[str, tuple[Callable[[], Any], Callable[[], Any]]] = {
        "onnxruntime": (lambda: raw.run(None, {"X": row}), lambda: raw.run(None, {"X": rows})),
        "scikit-learn": (lambda: model.predict_proba(row), lambda: model.predict_proba(rows)),
        "agent in-process": (lambda: local.infer(name, {"X": row}),
                             lambda: local.infer(name, {"X": rows})),
        "agent REST http.client": (lambda: via_http(body1), lambda: via_http(bodyb)),
        "agent REST raw socket": (lambda: client.call(raw1), lambda: client.call(rawb)),
    }
    singles: dict[str, list[np.ndarray]] = {label: [] for label in paths}
    batches: dict[str, list[np.ndarray]] = {label: [] for label in paths}
    for _ in range(ROUNDS):
        for label, (one, many) in paths.items():
            singles[label].append(timings(one, 20000, budget / ROUNDS))
            batches[label].append(timings(many, 200, budget / ROUNDS))
    conn.close()
    client.close()
    return {label: summary(np.concatenate(singles[label]), np.concatenate(batches[label]))
            for label in paths}


# -- main -------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="shorter runs")
    ap.add_argument("--mlserver-venv", type=Path, default=Path("/work/mlserver-venv"))
    ap.add_argument("--no-mlserver", action="store_true")
    ap.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve)
        return
    budget = 0.6 if args.quick else 2.0

    import onnxruntime as ort

    models, X = train_models(args.quick)
    registry = ModelRegistry()
    tmp = Path(tempfile.mkdtemp(prefix="bench-inference-"))
    for name, model in models.items():
        (tmp / f"{name}.onnx").write_bytes(to_onnx_bytes(model))
    server, port = start_server(tmp)
    results: dict[str, dict[str, dict[str, float]]] = {}
    try:
        for name, model in models.items():
            results[name] = bench_model(name, model, tmp / f"{name}.onnx", X, registry, port,
                                        budget)
    finally:
        assert server.stdin is not None
        server.stdin.close()
        server.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"onnxruntime {ort.__version__}, numpy {np.__version__}, python "
          f"{sys.version.split()[0]}, {os.cpu_count()} CPUs; single row p50/p99 in µs, "
          f"batch of {BATCH} in rows/s; ratios against raw onnxruntime in the same run;\n"
          "the agent's REST server runs in its own process, like MLServer\n")
    header = (f"{'model':<14} {'path':<24} {'p50 µs':>9} {'p99 µs':>9} {'p50 x':>7} "
              f"{'rows/s':>11} {'thr x':>7}")
    print(header)
    print("-" * len(header))
    for name, per in results.items():
        base = per["onnxruntime"]
        for label, r in per.items():
            print(f"{name:<14} {label:<24} {r['p50']:>9.1f} {r['p99']:>9.1f} "
                  f"{r['p50'] / base['p50']:>7.2f} {r['rows_s']:>11,.0f} "
                  f"{r['rows_s'] / base['rows_s']:>7.3f}")
        print()

    if args.no_mlserver:
        return
    agent_rest = results["logreg"]["agent REST raw socket"]
    print("MLServer (same LogisticRegression, scikit-learn runtime, REST, raw-socket client):")
    for label, workers in (("default settings", None), ("parallel_workers: 0", 0)):
        outcome = run_mlserver(args.mlserver_venv, models["logreg"], X, workers, budget)
        if isinstance(outcome, str):
            print(f"  MLServer {label}: skipped: {outcome}")
            continue
        r = outcome
        print(f"  MLServer {label:<20} p50 {r['p50']:8.1f} µs  p99 {r['p99']:8.1f} µs  "
              f"batch {r['rows_s']:>10,.0f} rows/s  |  agent REST p50 {agent_rest['p50']:.1f} µs:"
              f" MLServer / agent = {r['p50'] / agent_rest['p50']:.2f}x")


if __name__ == "__main__":
    main()
