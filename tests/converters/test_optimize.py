"""The optional optimized/quantized variant keeps to the checks and reports its figures."""

from __future__ import annotations

import numpy as np
import onnx
import pandas as pd

import converters
from converters.checks import ALLOWED_DOMAINS
from tests.converters.matrix import CASES, to_csv


def _selftest_feed(result: converters.ConvertedModel) -> dict[str, np.ndarray]:
    return {
        n: np.array(t["data"], dtype=np.float32).reshape(t["shape"])
        for n, t in result.selftest["inputs"].items()
    }


def test_wide_mlp_variant_is_quantized_smaller_and_close() -> None:
    from sklearn.datasets import load_breast_cancer
    from sklearn.neural_network import MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = load_breast_cancer(return_X_y=True)
    mlp = MLPRegressor(hidden_layer_sizes=(256, 256), max_iter=30, random_state=0)
    model = make_pipeline(StandardScaler(), mlp).fit(x, y.astype(float))
    frame = pd.DataFrame(x[::5], columns=[f"f{i}" for i in range(x.shape[1])])
    result = converters.convert_estimator(model, to_csv(frame))
    feed = _selftest_feed(result)
    variant = converters.optimize(result.onnx_bytes, feed=feed, tolerance=5e-2)
    assert variant.kind == "quantized"
    assert variant.size_ratio < 1.0
    assert variant.parity["passed"], variant.parity
    assert variant.parity["outputs"]["variable"]["max_abs"] > 0  # lossy, within 5e-2
    assert variant.latency_ratio > 0
    graph = onnx.load_from_string(variant.onnx_bytes)
    assert {n.domain for n in graph.graph.node} <= ALLOWED_DOMAINS
    assert [s.name for s in variant.outputs] == [s.name for s in result.outputs]
    # At a tighter tolerance the lossy variant is not chosen.
    strict = converters.optimize(result.onnx_bytes, feed=feed, tolerance=1e-4)
    assert strict.kind == "optimized" and strict.parity["passed"]


def test_small_mlp_keeps_the_optimized_variant_when_quantizing_would_grow_it() -> None:
    model, frame = next(c for c in CASES if c.name == "MLPClassifier").build()
    result = converters.convert_estimator(model, to_csv(frame))
    variant = converters.optimize(result.onnx_bytes, feed=_selftest_feed(result))
    assert variant.kind == "optimized" and variant.parity["passed"]


def test_tree_variant_falls_back_to_graph_optimization_without_loss() -> None:
    model, frame = next(c for c in CASES if c.name == "RandomForestClassifier").build()
    result = converters.convert_estimator(model, to_csv(frame))
    variant = converters.optimize(result.onnx_bytes, feed=_selftest_feed(result), tolerance=1e-5)
    assert variant.parity["passed"]
    assert variant.parity["outputs"]["label"]["agreement"] == 1.0
