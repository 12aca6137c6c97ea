"""Data summaries: exact counts on the reference bins, minimization, privacy noise, labels."""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
import pytest

from edge_agent.protocol import Envelope
from edge_agent.summaries import WindowSummarizer, profile_digest

EDGES0 = [-1.5, -1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0, 1.5]
EDGES1 = [10.0, 20.0, 30.0]


def _profile() -> dict[str, Any]:
    return {
        "features": [
            {"name": "f0", "input": "input", "column": 0, "kind": "numeric", "edges": EDGES0},
            {"name": "f1", "input": "input", "column": 1, "kind": "numeric", "edges": EDGES1},
            {
                "name": "color",
                "input": "color",
                "kind": "categorical",
                "vocabulary": ["blue", "green", "red"],
            },
        ],
        "outputs": {
            "label": "label",
            "scores": "probabilities",
            "classes": ["0", "1"],
            "score_edges": [0.6, 0.7, 0.8, 0.9],
        },
    }


def _batch(rng: np.random.Generator, n: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    x = np.column_stack([rng.normal(size=n), rng.uniform(0, 40, size=n)]).astype(np.float32)
    color = rng.choice(np.array(["blue", "green", "red", "pink"], dtype=object), size=(n, 1))
    p1 = rng.uniform(size=n).astype(np.float32)
    probs = np.column_stack([1 - p1, p1])
    label = (p1 > 0.5).astype(np.int64)
    return {"input": x, "color": color}, {"label": label, "probabilities": probs}


def _feed(s: WindowSummarizer, batches: list[Any], single_rows: bool = False) -> None:
    for ins, outs in batches:
        if single_rows:  # the way the local API calls it: one request, one row
            for i in range(len(outs["label"])):
                s.observe(
                    {k: v[i : i + 1] for k, v in ins.items()},
                    {k: v[i : i + 1] for k, v in outs.items()},
                )
        else:
            s.observe(ins, outs)


def _hist(values: np.ndarray, edges: list[float]) -> list[int]:
    v = values[np.isfinite(values)].astype(np.float64)
    full = [min(v.min(), edges[0]) - 1, *edges, max(v.max(), edges[-1]) + 1]
    return [int(c) for c in np.histogram(v, bins=full)[0]]


def test_counts_equal_numpy_histogram_on_the_same_data() -> None:
    rng = np.random.default_rng(1)
    batches = [_batch(rng, 300), _batch(rng, 1), _batch(rng, 700)]
    batches[0][0]["input"][:5, 0] = EDGES0[:5]  # values exactly on edges go to the upper bin
    batches[0][0]["input"][5:8, 0] = [np.nan, np.inf, -np.inf]
    batches[0][0]["color"][:3, 0] = [None, "pink", "red"]
    s = WindowSummarizer(_profile(), k_min=1, min_rows=1)
    _feed(s, batches[:2], single_rows=True)
    _feed(s, batches[2:])
    body = s.flush()
    assert body is not None
    x = np.concatenate([b[0]["input"] for b in batches]).astype(np.float64)
    color = np.concatenate([b[0]["color"] for b in batches])[:, 0].tolist()
    probs = np.concatenate([b[1]["probabilities"] for b in batches]).astype(np.float64)
    labels = np.concatenate([b[1]["label"] for b in batches])
    assert body["rows"] == 1001
    f0, f1, cat = body["features"]
    assert f0[0] == _hist(x[:, 0], EDGES0)
    assert f0[3:] == [1, 2]  # one NaN, two infinities
    finite = x[np.isfinite(x[:, 0]), 0]
    # The mean to a thousandth of a std, the std to 3 significant digits.
    assert f0[1] == pytest.approx(finite.mean(), abs=finite.std() / 1000)
    assert f0[2] == pytest.approx(finite.std(), rel=5e-3)
    assert f1[0] == _hist(x[:, 1], EDGES1)
    vocab = ["blue", "green", "red"]
    assert cat[0] == [color.count(c) for c in vocab]
    assert cat[1:] == [color.count("pink"), color.count(None)]
    assert body["pred"] == [int((labels == 0).sum()), int((labels == 1).sum()), 0]
    assert body["score"] == _hist(probs.max(axis=1), [0.6, 0.7, 0.8, 0.9])
    m = probs.max(axis=1)
    assert body["conf"][0] == 1001
    assert body["conf"][1] == pytest.approx(m.sum(), rel=1e-8)
    assert body["conf"][2] == pytest.approx(np.square(m).sum(), rel=1e-8)
    assert body["profile"] == profile_digest(_profile())
    assert s.flush() is None  # the window was reset


def test_bins_below_k_are_folded_into_their_smaller_neighbour_keeping_totals() -> None:
    # f1 bins: (-inf,10) [10,20) [20,30) [30,inf) get 3, 40, 2, 30 rows.
    values = np.array([5.0] * 3 + [15.0] * 40 + [25.0] * 2 + [35.0] * 30, dtype=np.float32)
    # f0 bins (ten): 6 rows in bin 2, 2 in bin 3, none in bins 4-5, 67 in bin 6.
    f0 = np.array([-0.75] * 6 + [-0.4] * 2 + [0.3] * 67, dtype=np.float32)
    n = len(values)
    ins = {
        "input": np.column_stack([f0, values]).astype(np.float32),
        "color": np.array([["blue"]] * 70 + [["red"]] * 2 + [["pink"]] * 3, dtype=object),
    }
    outs: dict[str, np.ndarray] = {
        "label": np.zeros(n, dtype=np.int64),
        "probabilities": np.tile([0.95, 0.05], (n, 1)).astype(np.float32),
    }
    s = WindowSummarizer(_profile(), k_min=5, min_rows=10)
    s.observe(ins, outs)
    body = s.flush()
    assert body is not None
    # 2 joins its smaller neighbour (30), then 3 its only neighbour (40): totals kept.
    assert body["features"][1][0] == [43, None, 32, None]
    # 2 joins its non-empty neighbour (6) rather than the empty bin 4.
    assert body["features"][0][0] == [0, 0, 8, None, 0, 0, 67, 0, 0, 0]
    # red (2) is folded into out-of-vocabulary, which then holds 2 + 3 = 5 >= k.
    assert body["features"][2] == [[70, 0, None], 5]
    cells = [c for key in ("features", "pred", "score") for c in _ints(body[key])]
    assert cells and not [c for c in cells if 0 < c < 5]


def _ints(x: Any) -> list[int]:
    if isinstance(x, list):
        return [i for y in x for i in _ints(y)]
    return [x] if isinstance(x, int) else []


def test_fewer_than_min_rows_are_held_and_merged_into_the_next_window() -> None:
    rng = np.random.default_rng(2)
    now = [1000.0]
    s = WindowSummarizer(_profile(), min_rows=100, clock=lambda: now[0])
    s.observe(*_batch(rng, 60))
    now[0] = 1300.0
    assert s.flush() is None
    assert s.rows == 60
    s.observe(*_batch(rng, 50))
    now[0] = 1600.0
    body = s.flush()
    assert body is not None
    assert (body["rows"], body["windows"], body["start"], body["end"]) == (110, 2, 1000, 1600)


def test_no_raw_value_or_foreign_string_leaves_the_summarizer() -> None:
    rng = np.random.default_rng(3)
    ins, outs = _batch(rng, 400)
    ins["input"][17, 0] = 987654.3125  # a unique marker value (exact in float32)
    ins["color"][42, 0] = "alice@example.com"
    s = WindowSummarizer(_profile())
    s.observe(ins, outs, ids=[f"req-{i}" for i in range(400)])
    assert s.record_label("req-5", "1")
    body = s.flush()
    assert body is not None
    wire = Envelope("dev-1", 1, "summary", 0.0, body).to_bytes()
    assert b"987654" not in wire
    assert b"alice" not in wire and b"example" not in wire and b"req-" not in wire
    raw = {float(v) for v in ins["input"].ravel()} | {
        float(v) for v in outs["probabilities"].ravel()
    }
    numbers: list[float] = []

    def walk(x: Any) -> None:
        if isinstance(x, list):
            for y in x:
                walk(y)
        elif isinstance(x, dict):
            for y in x.values():
                walk(y)
        elif isinstance(x, float):
            numbers.append(x)

    walk(json.loads(wire))
    assert numbers and not raw & set(numbers)
    strings = re.findall(rb'"([^"]*)"', wire)
    assert set(strings) <= {
        b"body",
        b"device",
        b"dev-1",
        b"kind",
        b"summary",
        b"seq",
        b"ts",
        b"v",
        *(k.encode() for k in body),
        body["profile"].encode(),
    }


def test_sums_over_fewer_than_k_values_are_not_sent() -> None:
    n = 120
    x = np.full((n, 2), np.nan, dtype=np.float32)
    x[:3, 0] = [1.0, 2.0, 3.0]  # three finite values: their sum would reveal them
    x[:, 1] = 15.0
    ins = {"input": x, "color": np.array([["blue"]] * n, dtype=object)}
    outs: dict[str, np.ndarray] = {
        "label": np.zeros(n, dtype=np.int64),
        "probabilities": np.tile([0.9, 0.1], (n, 1)).astype(np.float32),
    }
    s = WindowSummarizer(_profile())
    s.observe(ins, outs)
    body = s.flush()
    assert body is not None
    f0, f1 = body["features"][:2]
    assert f0[1:3] == [None, None] and f0[3] == 117
    assert f1[1:3] == [15.0, 0.0]


def test_mean_and_std_stay_exact_far_from_zero() -> None:
    profile = {
        "features": [
            {"name": "t", "input": "t", "kind": "numeric", "edges": [1e6 + e for e in EDGES0]}
        ]
    }
    rng = np.random.default_rng(5)
    v = 1e6 + rng.normal(scale=0.01, size=500)  # mean/std ratio 1e8: sumsq would cancel
    s = WindowSummarizer(profile)
    s.observe({"t": v.reshape(-1, 1)}, {})
    body = s.flush()
    assert body is not None
    assert body["features"][0][1] == pytest.approx(v.mean(), abs=v.std() / 1000)
    assert body["features"][0][2] == pytest.approx(v.std(), rel=5e-3)


def test_dp_noise_changes_counts_and_records_the_budget() -> None:
    rng = np.random.default_rng(4)
    batch = _batch(rng, 2000)
    plain = WindowSummarizer(_profile(), k_min=1)
    plain.observe(*batch)
    exact = plain.flush()
    noisy_bodies = []
    for seed in (10, 11):
        s = WindowSummarizer(_profile(), k_min=1, epsilon=1.0, rng=np.random.default_rng(seed))
        s.observe(*batch)
        noisy_bodies.append(s.flush())
    a, b = noisy_bodies
    assert exact is not None and a is not None and b is not None
    assert a["dp"] == {"mechanism": "geometric", "epsilon": 1.0, "queries": 10}
    assert "dp" not in exact
    assert a["features"][0][0] != exact["features"][0][0]
    assert a["features"][0][0] != b["features"][0][0]
    assert a["features"][0][1:3] == [None, None]  # unbounded sums are not released
    # Noise is centred and its scale follows epsilon / queries (discrete Laplace, b = 10).
    diff = np.array(a["features"][0][0]) - np.array(exact["features"][0][0])
    assert np.abs(diff).max() < 10 * 12
    assert abs(a["rows"] - 2000) < 10 * 12


def test_labels_are_counted_against_recent_predictions_only() -> None:
    n = 200
    ins = {
        "input": np.zeros((n, 2), dtype=np.float32),
        "color": np.array([["red"]] * n, dtype=object),
    }
    label = np.array([0] * 100 + [1] * 100, dtype=np.int64)
    outs: dict[str, np.ndarray] = {
        "label": label,
        "probabilities": np.tile([0.5, 0.5], (n, 1)).astype(np.float32),
    }
    s = WindowSummarizer(_profile(), k_min=5, label_ring=150)
    s.observe(ins, outs, ids=[f"r{i}" for i in range(n)])
    assert not s.record_label("r0", 0)  # fell out of the ring of 150
    assert all(s.record_label(f"r{i}", 1) for i in range(60, 70))  # true 1, predicted 0
    assert all(s.record_label(f"r{i}", "1") for i in range(100, 120))  # correct
    assert all(s.record_label(f"r{i}", "cat") for i in range(120, 123))  # unknown class
    assert not s.record_label("r100", 1)  # each prediction is labelled once
    body = s.flush()
    assert body is not None
    # [true, predicted, count]; class index 2 is "other"; 3 < k is suppressed.
    assert body["labels"] == [[1, 0, 10], [1, 1, 20]]


def test_the_converters_profile_of_a_real_model_drives_the_summarizer() -> None:
    import onnxruntime as ort
    from sklearn.datasets import load_wine
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from converters import convert_estimator

    x, y = load_wine(return_X_y=True, as_frame=True)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x, y)
    converted = convert_estimator(model, x)
    session = ort.InferenceSession(converted.onnx_bytes, providers=["CPUExecutionProvider"])
    feed = {"input": x.to_numpy(np.float32)}
    label, probs = session.run(["label", "probabilities"], feed)
    s = WindowSummarizer(converted.profile, k_min=1)
    s.observe(feed, {"label": label, "probabilities": probs})
    body = s.flush()
    assert body is not None and body["rows"] == len(x)
    for f, entry in zip(converted.profile["features"], body["features"], strict=True):
        # The reference rows themselves, fed as float32 like the agent sees them, land in
        # exactly the reference bins (edges are compared at float32 precision).
        assert entry[0] == f["counts"], f["name"]
    assert body["score"] == converted.profile["score"]["counts"]
    classes = sorted(converted.profile["classes"]["mix"])
    assert body["pred"][:-1] == [int((label == int(c)).sum()) for c in classes]
