"""onnxruntime sessions the way agents run them: CPU, one intra-op thread."""

from __future__ import annotations

from typing import Any

import numpy as np

from converters.exceptions import ModelCheckError


def session(onnx_bytes: bytes, *, threads: int = 1, optimize: bool = True) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        return ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise ModelCheckError("onnxruntime_load", f"onnxruntime refused the model: {e}") from e


def run(sess: Any, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    try:
        values = sess.run(None, feed)
    except Exception as e:
        raise ModelCheckError("onnxruntime_run", f"onnxruntime failed on the rows: {e}") from e
    return {o.name: np.asarray(v) for o, v in zip(sess.get_outputs(), values, strict=True)}
