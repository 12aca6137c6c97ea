"""The health gate a new model version passes before it serves: self-test rows + latency.

``package.selftest`` holds sample rows and the outputs the original model gave for them,
in OIP tensor form::

    {"inputs":  {"X": {"datatype": "FP32", "shape": [3, 4], "data": [...]}},
     "outputs": {"label": {"datatype": "INT64", "shape": [3], "data": [...]}, ...}}

(or a list of such cases). Labels, integers and strings must match exactly; floats within
``package.tolerance``, absolute or relative. Single-row latency (median of a few runs after
one warm-up) must stay within ``package.latency_budget_ms``.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from edge_agent.exceptions import EdgeAgentError, HealthGateError
from edge_agent.oip import tensors_from_oip
from edge_agent.protocol import ModelPackage
from edge_agent.runtime import OIP_TO_NUMPY, LoadedModel

LATENCY_RUNS = 15
LATENCY_WARMUP = 2


def _cases(selftest: Any) -> list[dict[str, Any]]:
    if not selftest:
        return []
    cases = selftest if isinstance(selftest, list) else [selftest]
    for case in cases:
        if not isinstance(case, dict) or not isinstance(case.get("inputs"), dict):
            raise HealthGateError("selftest_failed", "self-test rows are malformed")
    return cases


def compare_outputs(
    expected: dict[str, np.ndarray], actual: dict[str, np.ndarray], tolerance: float
) -> list[str]:
    """Differences, worded for a report; empty when the outputs agree. No I/O."""
    problems: list[str] = []
    for name, want in expected.items():
        got = actual.get(name)
        if got is None:
            problems.append(f"output {name!r} missing")
            continue
        if got.size != want.size:
            problems.append(f"output {name!r}: {got.size} values, expected {want.size}")
            continue
        got = got.reshape(want.shape)
        if want.dtype.kind == "f" or got.dtype.kind == "f":
            g, w = got.astype(np.float64), want.astype(np.float64)
            diff = np.abs(g - w)
            ok = (diff <= tolerance) | (diff <= tolerance * np.abs(w)) | (g == w)
            if not bool(ok.all()):
                worst = float(np.nanmax(np.where(ok, 0.0, diff)))
                problems.append(
                    f"output {name!r}: {int((~ok).sum())} values beyond tolerance {tolerance} "
                    f"(worst difference {worst:.3g})"
                )
        else:
            same = got.astype(object) == want.astype(object)
            if not bool(np.all(same)):
                differ = int(np.size(same) - np.sum(same))
                problems.append(f"output {name!r}: {differ} values differ")
    return problems


def _first_row(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {n: (a[:1] if a.ndim and a.shape[0] > 1 else a) for n, a in inputs.items()}


def _synthetic_row(model: LoadedModel) -> dict[str, np.ndarray]:
    """One all-zero (or empty-string) row when the package brings no self-test rows."""
    row = {}
    for spec in model.inputs:
        shape = [1 if i == 0 and d < 0 else max(d, 1) for i, d in enumerate(spec.shape)]
        dtype = OIP_TO_NUMPY[spec.datatype]
        row[spec.name] = (
            np.full(shape, "", dtype=object) if dtype.kind == "O" else np.zeros(shape, dtype)
        )
    return row


def run_health_gate(model: LoadedModel, package: ModelPackage) -> dict[str, Any]:
    """Run the self-test and the latency check; ``HealthGateError`` when either fails."""
    cases = _cases(package.selftest)
    rows = 0
    latency_input: dict[str, np.ndarray] | None = None
    for i, case in enumerate(cases):
        try:
            inputs = tensors_from_oip(case["inputs"])
            expected = tensors_from_oip(case.get("outputs") or {})
        except EdgeAgentError as e:
            raise HealthGateError("selftest_failed", f"self-test case {i} is malformed: {e}") from e
        try:
            actual = model.infer(inputs)
        except EdgeAgentError as e:
            raise HealthGateError("selftest_failed", f"model failed its self-test: {e}") from e
        problems = compare_outputs(expected, actual, package.tolerance)
        if problems:
            raise HealthGateError("selftest_failed", "; ".join(problems))
        rows += max((a.shape[0] if a.ndim else 1) for a in inputs.values())
        if latency_input is None:
            latency_input = _first_row(inputs)
    if latency_input is None:
        latency_input = _synthetic_row(model)
    try:
        for _ in range(LATENCY_WARMUP):
            model.infer(latency_input)
        times = []
        for _ in range(LATENCY_RUNS):
            start = time.perf_counter()
            model.infer(latency_input)
            times.append(time.perf_counter() - start)
    except EdgeAgentError as e:
        raise HealthGateError("selftest_failed", f"model failed on a single row: {e}") from e
    p50_ms = float(np.median(times)) * 1000.0
    if p50_ms > package.latency_budget_ms:
        raise HealthGateError(
            "latency_budget",
            f"single-row latency {p50_ms:.3f} ms exceeds the budget of "
            f"{package.latency_budget_ms} ms",
        )
    return {
        "selftest_rows": rows,
        "selftest_cases": len(cases),
        "latency_p50_ms": round(p50_ms, 4),
        "latency_max_ms": round(max(times) * 1000.0, 4),
        "latency_budget_ms": package.latency_budget_ms,
    }
