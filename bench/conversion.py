"""Conversion benchmark over the converter test matrix.

For every estimator: conversion time (convert_estimator with a CSV sample, parity included),
ONNX size, parity, and onnxruntime latency (CPU, 1 intra-op thread) for one row and for a
batch of 1,000 rows, as a ratio to the original model's own predict_proba / predict /
transform measured in the same run. Prints a markdown table.

    .venv/bin/python -m bench.conversion [--quick]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

warnings.filterwarnings("ignore")


def _median_seconds(fn: Callable[[], Any], *, budget_s: float, min_runs: int = 5) -> float:
    fn()  # warm up
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < min_runs or (time.perf_counter() < deadline and len(times) < 2000):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _original_call(estimator: Any) -> Callable[[Any], Any]:
    for name in ("predict_proba", "predict", "transform"):
        if hasattr(estimator, name):
            return getattr(estimator, name)  # type: ignore[no-any-return]
    raise RuntimeError(f"{type(estimator).__name__} has nothing to call")


def bench_case(name: str, estimator: Any, frame: pd.DataFrame, budget_s: float) -> dict[str, Any]:
    import converters
    from converters.features import align
    from converters.runtime import session
    from tests.converters.matrix import to_csv

    csv = to_csv(frame)
    t0 = time.perf_counter()
    result = converters.convert_estimator(estimator, csv)
    convert_s = time.perf_counter() - t0

    aligned, layout = align(estimator, frame)
    big = pd.concat([aligned] * (1000 // len(aligned) + 1), ignore_index=True).head(1000)
    one = aligned.head(1)
    call = _original_call(estimator)
    x_one, x_big = layout.original_input(one), layout.original_input(big)
    feed_one, feed_big = layout.onnx_feed(one), layout.onnx_feed(big)
    sess = session(result.onnx_bytes, threads=1)

    ort_one = _median_seconds(lambda: sess.run(None, feed_one), budget_s=budget_s)
    orig_one = _median_seconds(lambda: call(x_one), budget_s=budget_s)
    ort_big = _median_seconds(lambda: sess.run(None, feed_big), budget_s=budget_s, min_runs=3)
    orig_big = _median_seconds(lambda: call(x_big), budget_s=budget_s, min_runs=3)

    scores = [o for o in result.parity["outputs"].values() if o["kind"] == "scores"]
    labels = [o for o in result.parity["outputs"].values() if o["kind"] == "label"]
    return {
        "model": name,
        "convert_s": convert_s,
        "onnx_kb": len(result.onnx_bytes) / 1024,
        "parity": "pass" if result.parity["passed"] else "FAIL",
        "max_abs": max((float(o["max_abs"]) for o in scores), default=0.0),
        "label_agree": min((o["agreement"] for o in labels), default=None),
        "ties": sum(o.get("float_ties", 0) for o in result.parity["outputs"].values()),
        "ort_one_us": ort_one * 1e6,
        "orig_one_us": orig_one * 1e6,
        "ort_big_ms": ort_big * 1e3,
        "orig_big_ms": orig_big * 1e3,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter timing budgets")
    args = parser.parse_args(argv)
    budget = 0.05 if args.quick else 0.25

    import onnxruntime
    import sklearn

    from tests.converters.matrix import CASES

    rows = []
    for case in CASES:
        if case.needs and importlib.util.find_spec(case.needs) is None:
            print(f"skipped {case.name}: {case.needs} not installed", file=sys.stderr)
            continue
        estimator, frame = case.build()
        rows.append(bench_case(case.name, estimator, frame, budget))

    print(
        f"onnxruntime {onnxruntime.__version__} (CPU, 1 intra-op thread) vs scikit-learn "
        f"{sklearn.__version__}; sample 200 rows; ratio = original time / onnxruntime time\n"
    )
    print(
        "| model | convert s | ONNX KiB | parity | max abs diff | label agree | float ties "
        "| ORT 1 row µs | orig 1 row µs | 1-row speed-up | ORT 1000 rows ms | "
        "orig 1000 rows ms | batch speed-up |"
    )
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    one_ratios, big_ratios = [], []
    for r in rows:
        one = r["orig_one_us"] / r["ort_one_us"]
        big = r["orig_big_ms"] / r["ort_big_ms"]
        one_ratios.append(one)
        big_ratios.append(big)
        agree = "" if r["label_agree"] is None else f"{r['label_agree']:.3f}"
        print(
            f"| {r['model']} | {r['convert_s']:.2f} | {r['onnx_kb']:.1f} | {r['parity']} | "
            f"{r['max_abs']:.1e} | {agree} | {r['ties']} | {r['ort_one_us']:.1f} | "
            f"{r['orig_one_us']:.1f} | {one:.1f}x | {r['ort_big_ms']:.2f} | "
            f"{r['orig_big_ms']:.2f} | {big:.1f}x |"
        )

    def gmean(xs: list[float]) -> float:
        return float(np.exp(np.mean(np.log(xs))))

    verdict = "passed" if all(r["parity"] == "pass" for r in rows) else "did NOT all pass"
    print(
        f"\n{len(rows)} models, parity {verdict}. "
        f"Single row: onnxruntime is {gmean(one_ratios):.1f}x faster (geometric mean; "
        f"min {min(one_ratios):.1f}x, max {max(one_ratios):.1f}x). Batch of 1000: "
        f"{gmean(big_ratios):.1f}x (min {min(big_ratios):.2f}x, max {max(big_ratios):.1f}x)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
