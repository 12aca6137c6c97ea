"""Parity: the original model's outputs against onnxruntime's on the same rows.

Verification only (arrays in, a JSON-able report out). Rules:

* scores (probabilities, decision values, regression values, transforms) pass when
  ``|onnx - original| <= tolerance * max(1, |original|)`` for every element: absolute for
  values up to 1, relative above (float32 keeps about 7 significant digits);
* labels must agree on every row;
* except *float ties*, which are counted, not failed. The ONNX model computes in float32,
  the original in float64, so the original runs twice: on the sample rounded to float32
  (the expected outputs, what a device sends) and on the sample as given. A row is a
  float tie when the ONNX output matches one of the two, or, for a label, when the
  original's two best class scores (or a decision value and its threshold 0) are within
  ``2 * tolerance``. Such rows sit on a decision boundary closer than float32 resolution
  (a tree threshold equal to a sample value is the common case).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from converters.exceptions import ParityError


def _tie_rows(scores: np.ndarray | None, tolerance: float, n: int) -> np.ndarray:
    if scores is None:
        return np.zeros(n, dtype=bool)
    s = np.asarray(scores, dtype=np.float64).reshape(n, -1)
    if s.shape[1] == 1:
        return np.asarray(np.abs(s[:, 0]) <= 2 * tolerance)
    top = np.sort(s, axis=1)
    return np.asarray(top[:, -1] - top[:, -2] <= 2 * tolerance)


def _score_bad(
    want: np.ndarray, got: np.ndarray, tolerance: float
) -> tuple[np.ndarray, np.ndarray]:
    """(elementwise difference, elementwise out-of-tolerance) for float outputs."""
    both_nan = np.isnan(want) & np.isnan(got)
    diff = np.where(both_nan, 0.0, np.abs(want - got))
    diff = np.where(np.isnan(diff), np.inf, diff)
    scale = np.maximum(1.0, np.abs(np.nan_to_num(want)))
    return diff, diff > tolerance * scale


def compare(
    expected: dict[str, np.ndarray],
    actual: dict[str, np.ndarray],
    roles: dict[str, str],
    *,
    tolerance: float,
    expected_exact: dict[str, np.ndarray] | None = None,
    tie_scores: np.ndarray | None = None,
    source: str = "sample",
) -> tuple[dict[str, Any], np.ndarray]:
    """Compare; return (report, mask of rows that match ``expected`` exactly and are no
    float tie, the rows fit for self-tests).

    ``expected``: original outputs on float32-rounded rows; ``expected_exact``: on the
    rows as given (optional); ``tie_scores``: the original's class scores.
    """
    exact = expected_exact if expected_exact is not None else expected
    n = next(iter(expected.values())).shape[0]
    stable = np.ones(n, dtype=bool)
    outputs: dict[str, Any] = {}
    failures: list[str] = []
    ties = _tie_rows(tie_scores, tolerance, n)
    for name, want in expected.items():
        got = actual[name]
        alt = exact[name]
        if roles[name] == "label":
            equal = np.asarray(want.reshape(n, -1) == got.reshape(n, -1)).all(axis=1)
            equal_alt = np.asarray(alt.reshape(n, -1) == got.reshape(n, -1)).all(axis=1)
            tie_miss = ~equal & (equal_alt | ties)
            hard_miss = int((~equal & ~tie_miss).sum())
            stable &= equal & equal_alt & ~ties
            outputs[name] = {
                "kind": "label",
                "agreement": float(equal.mean()) if n else 1.0,
                "mismatches": hard_miss,
                "float_ties": int(tie_miss.sum()),
            }
            if hard_miss:
                failures.append(f"{name}: {hard_miss} of {n} labels differ")
            continue
        w = np.asarray(want, dtype=np.float64).reshape(n, -1)
        a = np.asarray(alt, dtype=np.float64).reshape(n, -1)
        g = np.asarray(got, dtype=np.float64).reshape(n, -1)
        if w.shape != g.shape:
            failures.append(f"{name}: shape {list(g.shape)} differs from {list(w.shape)}")
            outputs[name] = {"kind": "scores", "shape_mismatch": True}
            stable[:] = False
            continue
        diff, bad = _score_bad(w, g, tolerance)
        diff_alt, bad_alt = _score_bad(a, g, tolerance)
        row_bad = bad.any(axis=1)
        row_bad_alt = bad_alt.any(axis=1)
        hard = row_bad & row_bad_alt
        tie_rows = row_bad & ~row_bad_alt
        stable &= ~row_bad & ~row_bad_alt
        keep = ~tie_rows
        d = diff[keep] if keep.any() else np.zeros(1)
        ref = np.abs(np.nan_to_num(w[keep])) if keep.any() else np.ones(1)
        violations = int(hard.sum())
        outputs[name] = {
            "kind": "scores",
            "max_abs": _finite(float(d.max())),
            # relative to max(|original|, 1e-3): tiny probabilities do not blow it up
            "max_rel": _finite(float((d / np.maximum(ref, 1e-3)).max())),
            # the pass criterion: |diff| / max(1, |original|) <= tolerance
            "max_scaled": _finite(float((d / np.maximum(ref, 1.0)).max())),
            "violations": violations,
            "float_ties": int(tie_rows.sum()),
        }
        if violations:
            worst = float(np.minimum(diff, diff_alt).max())
            failures.append(
                f"{name}: {violations} of {n} rows differ by more than {tolerance:g} "
                f"(max abs {worst:.3g})"
            )
    report = {
        "compared": True,
        "source": source,
        "rows": int(n),
        "tolerance": tolerance,
        "passed": not failures,
        "forced": False,
        "failures": failures,
        "outputs": outputs,
    }
    return report, stable


def _finite(x: float) -> float | str:
    return x if np.isfinite(x) else "inf"


def enforce(report: dict[str, Any], *, force: bool) -> dict[str, Any]:
    """Raise ParityError for a failed report unless ``force``; mark a forced report."""
    if report["passed"]:
        return report
    if force:
        return {**report, "forced": True}
    raise ParityError(
        "converted model disagrees with the original: "
        + "; ".join(report["failures"])
        + " (publish with force=True to accept)",
        report,
    )
