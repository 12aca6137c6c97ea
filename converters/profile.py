"""The monitoring reference a model ships with: what its inputs and outputs looked like.

Agents bin live values with these edges and report counts (never raw values); the server
compares the counts with the reference. Layout (JSON)::

    {"version": 1, "rows": N,
     "features": [
        {"name": "age", "input": "input", "index": 3, "kind": "numeric",
         "edges": [9 inner decile edges, ascending, duplicates removed],
         "counts": [len(edges)+1 reference counts], "nulls": 0},
        {"name": "city", "input": "city", "index": 0, "kind": "categorical",
         "vocabulary": ["a", "b"], "counts": [..per vocabulary entry.., out-of-vocabulary]}],
     "score": {"output": "probabilities", "reduce": "column" | "max", "column": 1,
               "edges": [...], "counts": [...]},
     "classes": {"output": "label", "mix": {"0": 0.4, "1": 0.6}}}

The outer bins are open: bin 0 is (-inf, edges[0]), the last is [edges[-1], +inf).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

    from converters.features import FeatureLayout

PROFILE_VERSION = 1
DECILES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
MAX_VOCABULARY = 1000


def inner_edges(values: np.ndarray) -> list[float]:
    """Deciles of the finite values, duplicates removed (a constant feature has one edge)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return []
    return [float(e) for e in np.unique(np.quantile(v, DECILES))]


def bin_counts(values: np.ndarray, edges: list[float]) -> list[int]:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    idx = np.searchsorted(np.asarray(edges), v, side="right")
    return [int(c) for c in np.bincount(idx, minlength=len(edges) + 1)]


def build_profile(
    frame: pd.DataFrame,
    layout: FeatureLayout,
    outputs: dict[str, np.ndarray],
    roles: dict[str, str],
) -> dict[str, Any]:
    features: list[dict[str, Any]] = []
    for name, input_name, index in layout.feature_inputs():
        col = frame[name]
        if name in layout.categorical:
            counts = col.astype(str).value_counts()
            vocab = sorted(str(v) for v in counts.index[:MAX_VOCABULARY])
            kept = int(sum(int(counts[v]) for v in vocab))
            features.append(
                {
                    "name": name,
                    "input": input_name,
                    "index": index,
                    "kind": "categorical",
                    "vocabulary": vocab,
                    "counts": [int(counts[v]) for v in vocab] + [len(col) - kept],
                }
            )
        else:
            values = col.to_numpy(dtype=np.float64)
            edges = inner_edges(values)
            features.append(
                {
                    "name": name,
                    "input": input_name,
                    "index": index,
                    "kind": "numeric",
                    "edges": edges,
                    "counts": bin_counts(values, edges),
                    "nulls": int(np.isnan(values).sum()),
                }
            )
    profile: dict[str, Any] = {
        "version": PROFILE_VERSION,
        "rows": len(frame),
        "features": features,
    }
    score = _score(outputs, roles)
    if score is not None:
        profile["score"] = score
    for name, role in roles.items():
        if role == "label":
            labels, counts = np.unique(
                np.asarray(outputs[name]).reshape(-1).astype(str), return_counts=True
            )
            total = int(counts.sum())
            profile["classes"] = {
                "output": name,
                "mix": {str(lab): int(c) / total for lab, c in zip(labels, counts, strict=True)},
            }
            break
    return profile


def _score(outputs: dict[str, np.ndarray], roles: dict[str, str]) -> dict[str, Any] | None:
    for name, role in roles.items():
        if role == "label":
            continue
        values = np.asarray(outputs[name], dtype=np.float64)
        values = values.reshape(values.shape[0], -1)
        if values.shape[1] == 2 and "label" in roles.values():
            reduce, column, s = "column", 1, values[:, 1]  # binary: the positive class
        elif values.shape[1] > 2 and "label" in roles.values():
            reduce, column, s = "max", None, values.max(axis=1)
        else:
            reduce, column, s = "column", 0, values[:, 0]
        edges = inner_edges(s)
        return {
            "output": name,
            "reduce": reduce,
            "column": column,
            "edges": edges,
            "counts": bin_counts(s, edges),
        }
    return None
