"""The health gate: self-test rows within tolerance, single-row latency within budget."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edge_agent.exceptions import HealthGateError
from edge_agent.protocol import ModelPackage
from edge_agent.runtime import LoadedModel, load_model
from edge_agent.selftest import compare_outputs, run_health_gate
from tests.agent_serving.conftest import BuiltModel


@pytest.fixture(scope="module")
def model(clf_v1: BuiltModel) -> LoadedModel:
    return load_model(clf_v1.path, clf_v1.package)


def _with_probabilities_shifted(package: ModelPackage, delta: float) -> ModelPackage:
    selftest = copy.deepcopy(package.selftest)
    probs = selftest["outputs"]["probabilities"]
    probs["data"] = [v + delta for v in probs["data"]]
    return replace(package, selftest=selftest)


def test_gate_passes_and_reports_figures(model: LoadedModel, clf_v1: BuiltModel) -> None:
    figures = run_health_gate(model, clf_v1.package)
    assert figures["selftest_rows"] == 5 and figures["selftest_cases"] == 1
    assert 0 < figures["latency_p50_ms"] < clf_v1.package.latency_budget_ms


def test_floats_within_tolerance_pass(model: LoadedModel, clf_v1: BuiltModel) -> None:
    package = replace(_with_probabilities_shifted(clf_v1.package, 5e-5), tolerance=1e-4)
    run_health_gate(model, package)


def test_floats_beyond_tolerance_fail(model: LoadedModel, clf_v1: BuiltModel) -> None:
    package = replace(_with_probabilities_shifted(clf_v1.package, 1e-3), tolerance=1e-4)
    with pytest.raises(HealthGateError) as info:
        run_health_gate(model, package)
    assert info.value.reason == "selftest_failed"
    assert "'probabilities'" in info.value.message and "beyond tolerance" in info.value.message


def test_a_different_label_fails_exactly(model: LoadedModel, clf_v1: BuiltModel) -> None:
    selftest = copy.deepcopy(clf_v1.package.selftest)
    labels = selftest["outputs"]["label"]["data"]
    labels[0] = (labels[0] + 1) % 3
    with pytest.raises(HealthGateError) as info:
        run_health_gate(model, replace(clf_v1.package, selftest=selftest, tolerance=10.0))
    assert info.value.reason == "selftest_failed"
    assert "'label': 1 values differ" in info.value.message


def test_latency_budget(model: LoadedModel, clf_v1: BuiltModel) -> None:
    with pytest.raises(HealthGateError) as info:
        run_health_gate(model, replace(clf_v1.package, latency_budget_ms=1e-6))
    assert info.value.reason == "latency_budget" and "exceeds the budget" in info.value.message


def test_malformed_selftest_rows_fail_the_gate(model: LoadedModel, clf_v1: BuiltModel) -> None:
    bad = {"inputs": {"X": {"datatype": "FP32", "shape": [1, 4], "data": [1, 2]}}, "outputs": {}}
    with pytest.raises(HealthGateError, match="malformed"):
        run_health_gate(model, replace(clf_v1.package, selftest=bad))


def test_huge_memory_model_fails_its_health_gate(
    huge_memory_model: tuple[Path, ModelPackage],
) -> None:
    path, package = huge_memory_model
    with pytest.raises(HealthGateError) as info:
        run_health_gate(load_model(path, package), package)
    assert info.value.reason == "selftest_failed"


def test_package_without_rows_still_checks_one_synthetic_row(
    model: LoadedModel, clf_v1: BuiltModel
) -> None:
    figures = run_health_gate(model, replace(clf_v1.package, selftest={}))
    assert figures["selftest_rows"] == 0 and figures["latency_p50_ms"] > 0


def test_compare_outputs_relative_tolerance_and_strings() -> None:
    big = {"y": np.array([1e6], np.float64)}
    assert compare_outputs(big, {"y": np.array([1e6 + 50], np.float64)}, 1e-4) == []
    assert compare_outputs(big, {"y": np.array([1e6 + 500], np.float64)}, 1e-4)
    s = {"c": np.array(["a", "b"], dtype=object)}
    assert compare_outputs(s, {"c": np.array(["a", "b"], dtype=object)}, 0) == []
    assert compare_outputs(s, {"c": np.array(["a", "c"], dtype=object)}, 0)
    assert compare_outputs(s, {}, 0) == ["output 'c' missing"]
