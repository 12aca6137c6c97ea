"""Self-test rows shipped in the signed package: inputs and the outputs to expect.

Format (Open Inference Protocol tensors, data flattened row-major, strings as str)::

    {"inputs":  {name: {"datatype": "FP32", "shape": [k, n], "data": [...]}},
     "outputs": {onnx_output_name: {"datatype": ..., "shape": [...], "data": [...]}}}
"""

from __future__ import annotations

from typing import Any

import numpy as np

from converters.specs import oip_tensor
from edge_agent.protocol import TensorSpec

SELFTEST_ROWS = 16


def pick_rows(row_ok: np.ndarray, limit: int = SELFTEST_ROWS) -> np.ndarray:
    """Up to ``limit`` row indices, spread over the sample, where parity held exactly:
    a row the conversion legitimately flips (a float tie) would fail on every device."""
    good = np.flatnonzero(row_ok)
    if good.size <= limit:
        return np.asarray(good)
    return np.asarray(good[np.linspace(0, good.size - 1, limit).round().astype(int)])


def build_selftest(
    feed: dict[str, np.ndarray],
    expected: dict[str, np.ndarray],
    inputs: tuple[TensorSpec, ...],
    outputs: tuple[TensorSpec, ...],
    rows: np.ndarray,
) -> dict[str, Any]:
    in_types = {s.name: s.datatype for s in inputs}
    out_types = {s.name: s.datatype for s in outputs}
    return {
        "inputs": {n: oip_tensor(a[rows], in_types[n]) for n, a in feed.items()},
        "outputs": {n: oip_tensor(a[rows], out_types[n]) for n, a in expected.items()},
    }
