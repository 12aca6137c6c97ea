"""Resident memory and cold start of the agent's serving stack.

A child process imports only ``edge_agent`` modules, loads a LogisticRegression (20 features)
with ``load_model``, runs its health gate, serves it with ``start_api``; the parent measures
spawn-to-ready time (first 200 on ``/v2/health/ready``) and VmRSS / VmHWM from /proc after
1000 inferences. Baseline in the same run: Python with numpy + onnxruntime imported.
Goals: <= 96 MiB RSS, <= 0.5 s to ready.

    .venv/bin/python bench/footprint.py [--runs 5]
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("sklearn", "skl2onnx", "onnx", "fastapi", "uvicorn", "pydantic", "starlette",
         "scipy", "pandas", "sqlalchemy", "fleet_server", "converters")
GOAL_RSS_MIB = 96.0
GOAL_READY_S = 0.5


def child(model: Path, package_file: Path) -> None:
    """The serving stack alone: what the device runs."""
    t0 = time.perf_counter()
    sys.path.insert(0, str(REPO))
    from edge_agent.http_api import start_api
    from edge_agent.protocol import ModelPackage
    from edge_agent.runtime import ModelRegistry, load_model
    from edge_agent.selftest import run_health_gate

    t_import = time.perf_counter()
    package = ModelPackage.from_bytes(package_file.read_bytes())
    registry = ModelRegistry()
    loaded = load_model(model, package)
    run_health_gate(loaded, package)
    registry.swap(loaded)
    t_model = time.perf_counter()
    api = start_api(registry, port=0)
    heavy = sorted({m.split(".")[0] for m in sys.modules} & set(HEAVY))
    print(json.dumps({"port": api.port, "heavy": heavy, "imports_s": t_import - t0,
                      "load_and_gate_s": t_model - t_import,
                      "api_s": time.perf_counter() - t_model}), flush=True)
    sys.stdin.read()  # until the parent closes our stdin
    api.close()


def rss_mib(pid: int) -> tuple[float, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def build_model(directory: Path) -> tuple[Path, Path, list[float]]:
    import numpy as np
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    sys.path.insert(0, str(REPO))
    from edge_agent.protocol import ModelPackage

    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 20)).astype(np.float32)
    y = (X[:, 0] - X[:, 1] > 0).astype(np.int64)
    clf = LogisticRegression(max_iter=500).fit(X, y)
    data = to_onnx(clf, X[:1], options={"zipmap": False}, target_opset=17).SerializeToString()
    model = directory / "model.onnx"
    model.write_bytes(data)
    proba = clf.predict_proba(X[:3]).astype(np.float32)
    selftest = {
        "inputs": {"X": {"datatype": "FP32", "shape": [3, 20], "data": X[:3].ravel().tolist()}},
        "outputs": {
            "label": {"datatype": "INT64", "shape": [3], "data": clf.predict(X[:3]).tolist()},
            "probabilities": {"datatype": "FP32", "shape": [3, 2],
                              "data": proba.ravel().tolist()},
        },
    }
    package = ModelPackage("footprint", 1, "models/footprint/1/model.onnx",
                           hashlib.sha256(data).hexdigest(), (), (), 17, "1.17", selftest)
    package_file = directory / "package.json"
    package_file.write_bytes(package.to_bytes())
    return model, package_file, X[0].tolist()


def one_run(model: Path, package_file: Path, row: list[float]) -> dict[str, float | list[str]]:
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", str(model), str(package_file)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        info = json.loads(proc.stdout.readline())
        conn = http.client.HTTPConnection("127.0.0.1", info["port"], timeout=5)
        conn.request("GET", "/v2/health/ready")
        resp = conn.getresponse()
        resp.read()
        ready_s = time.perf_counter() - start
        assert resp.status == 200
        rss_ready, _ = rss_mib(proc.pid)
        body = json.dumps({"inputs": [{"name": "X", "shape": [1, 20], "datatype": "FP32",
                                       "data": row}]})
        for _ in range(1000):
            conn.request("POST", "/v2/models/footprint/infer", body)
            r = conn.getresponse()
            r.read()
            assert r.status == 200
        conn.close()
        rss, hwm = rss_mib(proc.pid)
        proc.stdin.close()
        proc.wait(timeout=10)
        return {"ready_s": ready_s, "rss_ready": rss_ready, "rss": rss, "hwm": hwm,
                "imports_s": info["imports_s"], "load_and_gate_s": info["load_and_gate_s"],
                "api_s": info["api_s"], "heavy": info["heavy"]}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def baseline() -> tuple[float, float]:
    """RSS of Python with numpy + onnxruntime imported (what any ONNX server starts from)."""
    code = (
        "import time; t=time.perf_counter(); import numpy, onnxruntime; "
        "d=time.perf_counter()-t; import sys\n"
        "rss=[l for l in open('/proc/self/status') if l.startswith('VmRSS')][0].split()[1]\n"
        "print(int(rss)/1024, d)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    return float(out[0]), float(out[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    with tempfile.TemporaryDirectory(prefix="bench-footprint-") as tmp:
        model, package_file, row = build_model(Path(tmp))
        runs = [one_run(model, package_file, row) for _ in range(args.runs)]
    base_rss, base_import = baseline()

    def med(key: str) -> float:
        return statistics.median(float(r[key]) for r in runs)  # type: ignore[arg-type]

    heavy = sorted({m for r in runs for m in r["heavy"]})  # type: ignore[union-attr]
    print(f"agent serving stack, LogisticRegression (20 features), median of {args.runs} runs")
    print(f"  heavy modules imported by the child: {heavy or 'none'}")
    print(f"  {'cold start to ready (spawn -> 200)':<44} {med('ready_s'):8.3f} s   "
          f"goal <= {GOAL_READY_S} s  {'OK' if med('ready_s') <= GOAL_READY_S else 'MISSED'}")
    print(f"    {'imports (edge_agent, numpy, onnxruntime)':<42} {med('imports_s'):8.3f} s")
    print(f"    {'load_model + health gate':<42} {med('load_and_gate_s'):8.3f} s")
    print(f"    {'start_api':<42} {med('api_s'):8.3f} s")
    print(f"  {'VmRSS when ready':<44} {med('rss_ready'):8.1f} MiB")
    print(f"  {'VmRSS after 1000 REST inferences':<44} {med('rss'):8.1f} MiB "
          f"goal <= {GOAL_RSS_MIB:.0f} MiB  {'OK' if med('rss') <= GOAL_RSS_MIB else 'MISSED'}")
    print(f"  {'VmHWM (peak)':<44} {med('hwm'):8.1f} MiB")
    print(f"  baseline: python + numpy + onnxruntime imported: {base_rss:.1f} MiB, "
          f"import {base_import:.3f} s; the serving stack adds "
          f"{med('rss') - base_rss:.1f} MiB ({med('rss') / base_rss:.2f}x)")


if __name__ == "__main__":
    main()
