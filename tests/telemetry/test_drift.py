"""Server-side drift: agent summaries of a real model against its converters' profile."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from edge_agent.summaries import WindowSummarizer
from fleet_server.drift import (
    AlertTracker,
    DriftThresholds,
    FeatureDrift,
    SummaryError,
    evaluate,
    feature_drift,
    merge_summaries,
)


@pytest.fixture(scope="module")
def cancer() -> dict[str, Any]:
    import onnxruntime as ort
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from converters import convert_estimator

    x, y = load_breast_cancer(return_X_y=True, as_frame=True)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x, y)
    converted = convert_estimator(model, x)
    session = ort.InferenceSession(converted.onnx_bytes, providers=["CPUExecutionProvider"])
    return {"x": x.to_numpy(np.float32), "profile": converted.profile, "session": session}


def _summaries(
    cancer: dict[str, Any], rows: int, windows: int, shift: dict[int, float], seed: int
) -> list[dict[str, Any]]:
    """A device's windows: rows resampled from the reference data, some columns shifted."""
    rng = np.random.default_rng(seed)
    x = cancer["x"]
    out = []
    for _ in range(windows):
        s = WindowSummarizer(cancer["profile"])
        batch = x[rng.integers(0, len(x), size=rows)].copy()
        for col, by in shift.items():
            batch[:, col] += by * x[:, col].std()
        label, probs = cancer["session"].run(["label", "probabilities"], {"input": batch})
        s.observe({"input": batch}, {"label": label, "probabilities": probs})
        body = s.flush()
        assert body is not None
        out.append(body)
    return out


def test_a_shifted_feature_alerts_and_the_others_stay_quiet(cancer: dict[str, Any]) -> None:
    merged = merge_summaries(_summaries(cancer, 400, 5, {0: 1.0}, seed=1))
    assert merged["rows"] == 2000 and merged["windows"] == 5
    results = {r.feature: r for r in evaluate(cancer["profile"], merged)}
    shifted = results["mean radius"]
    assert shifted.level == "alert"
    assert shifted.psi > DriftThresholds().psi_alert
    assert shifted.wasserstein is not None and shifted.wasserstein > 0.2
    assert shifted.js > 0.2 and shifted.p_value < 1e-6
    # Features correlated with radius (perimeter, area) drift in a real shift; here only
    # the column moved, so every other input stays below the warn line.
    for name, r in results.items():
        if r.kind == "numeric" and name != "mean radius":
            assert r.level == "ok" and r.psi < 0.1, (name, r.psi)
            assert r.wasserstein is not None and r.wasserstein < 0.1
    assert {"prediction", "score"} <= set(results)


def test_unshifted_traffic_raises_nothing(cancer: dict[str, Any]) -> None:
    merged = merge_summaries(_summaries(cancer, 500, 3, {}, seed=2))
    results = evaluate(cancer["profile"], merged)
    assert len(results) == 30 + 2
    assert all(r.level == "ok" for r in results), [r for r in results if r.level != "ok"]
    assert max(r.psi for r in results) < 0.1


def test_nothing_is_evaluated_under_min_rows(cancer: dict[str, Any]) -> None:
    [small] = _summaries(cancer, 300, 1, {0: 3.0}, seed=3)
    assert evaluate(cancer["profile"], small, min_rows=1000) == []
    assert evaluate(cancer["profile"], small, min_rows=300)  # evaluated once enough rows


def test_a_summary_of_another_profile_is_refused(cancer: dict[str, Any]) -> None:
    [body] = _summaries(cancer, 200, 1, {}, seed=4)
    other = dict(cancer["profile"], rows=1)
    with pytest.raises(SummaryError, match="another profile"):
        evaluate(other, body, min_rows=1)
    with pytest.raises(SummaryError):
        merge_summaries([body, {**body, "profile": "0" * 16}])


CATEGORICAL_PROFILE: dict[str, Any] = {
    "rows": 1000,
    "features": [
        {
            "name": "colour",
            "input": "colour",
            "index": 0,
            "kind": "categorical",
            "vocabulary": ["blue", "green", "red"],
            "counts": [500, 300, 200, 0],
        }
    ],
}


def _categorical_summary(mix: dict[str, int]) -> dict[str, Any]:
    values = [c for c, n in mix.items() for _ in range(n)]
    s = WindowSummarizer(CATEGORICAL_PROFILE)
    s.observe({"colour": np.array(values, dtype=object).reshape(-1, 1)}, {})
    body = s.flush()
    assert body is not None
    return body


def test_chi_square_flags_a_changed_category_mix() -> None:
    changed = _categorical_summary({"blue": 200, "green": 300, "red": 480, "mauve": 20})
    [r] = evaluate(CATEGORICAL_PROFILE, changed, min_rows=1000)
    assert r.kind == "categorical" and r.wasserstein is None
    assert r.p_value < 1e-10 and r.level == "alert" and r.psi > 0.25
    same = _categorical_summary({"blue": 510, "green": 290, "red": 200})
    [r] = evaluate(CATEGORICAL_PROFILE, same, min_rows=1000)
    assert r.p_value > 0.01 and r.level == "ok"


def test_a_large_window_with_a_tiny_change_is_significant_but_not_drift() -> None:
    ref = {"kind": "categorical", "vocabulary": ["a", "b"], "counts": [50_000, 50_000, 0]}
    m = feature_drift(ref, {"counts": [51_000, 49_000, 0]})
    assert m["p_value"] < 0.01 and m["psi"] < 0.01  # chi-square alone would page someone


def test_numeric_reference_without_counts_uses_equal_decile_masses() -> None:
    ref = {"kind": "numeric", "edges": [float(i) for i in range(1, 10)]}
    flat = feature_drift(ref, {"counts": [100] * 10})
    assert flat["psi"] == pytest.approx(0.0) and flat["wasserstein"] == pytest.approx(0.0)
    skewed = feature_drift(ref, {"counts": [0] * 5 + [200] * 5})
    assert skewed["psi"] > 1 and skewed["wasserstein"] > 0.1


def test_folded_bins_are_compared_with_the_reference_folded_the_same_way() -> None:
    ref = {"kind": "numeric", "edges": [1.0, 2.0, 3.0], "counts": [10, 10, 10, 10]}
    # The device folded bin 1 into bin 0 (k-anonymity): 20 rows in [-inf, 2).
    m = feature_drift(ref, {"counts": [20, None, 10, 10]})
    assert m["psi"] == pytest.approx(0.0, abs=1e-12) and m["rows"] == 40
    with pytest.raises(SummaryError):
        feature_drift(ref, {"counts": [None, 20, 10, 10]})
    with pytest.raises(SummaryError):
        feature_drift(ref, {"counts": [20, -1, 10, 10]})
    with pytest.raises(SummaryError):
        feature_drift(ref, {"counts": [20, 10, 10]})


def test_merging_uses_the_coarsest_common_folding() -> None:
    base: dict[str, Any] = {
        "schema": 1,
        "profile": "p",
        "k": 5,
        "windows": 1,
        "start": 10,
        "end": 20,
    }
    a: dict[str, Any] = {
        **base,
        "rows": 80,
        "features": [[[43, None, 32, None], 1.0, 1.0, 5], [[70, 0, None], 5]],
        "pred": [50, None, 30],
        "labels": [[0, 0, 7]],
    }
    b: dict[str, Any] = {
        **base,
        "rows": 100,
        "start": 5,
        "features": [[[10, 20, 30, 40], None, None], [[5, 5, 5], 0, 6]],
        "pred": [40, 60, 0],
        "labels": [[0, 0, 3], [1, 0, 5]],
        "dp": {"mechanism": "geometric", "epsilon": 0.5, "queries": 9},
    }
    m = merge_summaries([a, b])
    assert m["rows"] == 180 and m["windows"] == 2 and (m["start"], m["end"]) == (5, 20)
    assert m["features"][0] == [[73, None, 102, None], None, None, 5]
    c = {**b, "features": [[[0, 5, 10, 5], 3.0, 1.0], b["features"][1]]}
    moments = merge_summaries([a, c])["features"][0][1:3]
    # 75 rows with mean 1, std 1 and 20 rows with mean 3, std 1:
    mean = (75 * 1 + 20 * 3) / 95
    var = (75 * (1 + (1 - mean) ** 2) + 20 * (1 + (3 - mean) ** 2)) / 95
    assert moments == pytest.approx([mean, var**0.5], rel=1e-12)
    assert m["features"][1] == [[75, 5, None], 10, 6]  # 5 + b's folded red (5)
    assert m["pred"] == [90, None, 90]
    assert m["labels"] == [[0, 0, 10], [1, 0, 5]]
    assert m["dp"]["epsilon"] == 0.5
    with pytest.raises(SummaryError):
        merge_summaries([a, {**b, "features": [[[1, 2, 3, 4], 1.0, 1.0]]}])
    with pytest.raises(SummaryError):
        merge_summaries([a, {**b, "features": [[[1, 2, 3], 1.0, 1.0], [[5, 5, 5], 0, 6]]}])


def _result(feature: str, level: str) -> FeatureDrift:
    return FeatureDrift(feature, "numeric", 1000, 0.3, 0.2, 0.2, 50.0, 1e-9, "psi", level)  # type: ignore[arg-type]


def test_an_alert_opens_after_consecutive_breaches_and_resolves_after_a_clean_window() -> None:
    t = AlertTracker(consecutive=3)
    assert t.update("d1", [_result("age", "alert")]) == []
    assert t.update("d1", [_result("age", "warn")]) == []
    assert t.update("d1", [_result("age", "ok")]) == []  # the streak is broken
    assert t.update("d1", [_result("age", "warn")]) == []
    assert t.update("d1", [_result("age", "alert")]) == []
    [ev] = t.update("d1", [_result("age", "alert"), _result("bmi", "ok")])
    assert (ev.kind, ev.device, ev.severity) == ("drift", "d1", "critical")
    assert ev.detail == {"features": {"age": "alert"}}
    assert t.update("d1", [_result("age", "alert")]) == []  # open already, unchanged
    [ev] = t.update("d1", [_result("age", "warn")])  # still breaching, milder
    assert (ev.kind, ev.severity) == ("drift", "warning")
    [ev] = t.update("d1", [_result("age", "ok")])
    assert ev.kind == "drift_resolved"
    restored = AlertTracker.from_json(t.to_json(), consecutive=3)
    assert restored.to_json() == t.to_json()


def test_a_cohort_incident_opens_when_many_devices_of_a_group_drift_at_once() -> None:
    t = AlertTracker(consecutive=2, cohort_fraction=0.5, cohort_min_devices=3)
    for d in range(6):
        t.update(f"d{d}", [_result("age", "ok")], group="site-a")
    t.update("x0", [_result("age", "alert")], group="site-b")
    events: list[Any] = []
    for _ in range(2):
        for d in range(3):
            events += t.update(f"d{d}", [_result("age", "alert")], group="site-a")
    cohort = [e for e in events if e.kind == "cohort_drift"]
    assert len(cohort) == 1 and cohort[0].group == "site-a"
    assert cohort[0].detail["devices"] == ["d0", "d1", "d2"]
    assert cohort[0].detail["features"] == {"age": 3}
    assert len([e for e in events if e.kind == "drift"]) == 3
    # One more evaluation of the same devices does not repeat the incident.
    assert not [e for e in t.update("d0", [_result("age", "alert")]) if e.kind == "cohort_drift"]
    ends = t.update("d1", [_result("age", "ok")])
    assert [e.kind for e in ends] == ["drift_resolved", "cohort_resolved"]
