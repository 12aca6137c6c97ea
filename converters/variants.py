"""Optional smaller/faster variant of a checked model: dynamic int8 quantization of
weights, or else onnxruntime's basic graph optimizations (MatMul/Gemm-heavy models such
as MLPs and linear models gain; tree ensembles stay as they are).

The variant passes the same checks as any upload (basic optimizations keep standard
operators; extended ones would add com.microsoft ops, which agents refuse) and carries its
own parity against the unoptimized model, size and latency ratios. Quantization is lossy:
the default tolerance is 1e-2, and the caller decides whether to ship a variant.
"""

from __future__ import annotations

import contextlib
import hashlib
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from converters.checks import DEFAULT_MAX_BYTES, check_onnx, opsets, ort_min
from converters.exceptions import ConverterError
from converters.parity import compare
from converters.result import ConvertedVariant
from converters.runtime import run, session
from converters.specs import tensor_specs


def _latency(sess: Any, feed: dict[str, np.ndarray], runs: int = 200) -> float:
    sess.run(None, feed)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _normalized(variant: bytes, base: onnx.ModelProto) -> bytes:
    """Drop the opset imports onnxruntime adds for every domain it knows (unused ones) and
    keep the base model's IR version; the checks then judge what the graph really uses."""
    model = onnx.load_from_string(variant)
    used = {n.domain for n in model.graph.node} | {""}
    kept = [imp for imp in model.opset_import if imp.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    model.ir_version = min(model.ir_version, base.ir_version)
    out: bytes = model.SerializeToString()
    return out


def _graph_optimized(onnx_bytes: bytes, workdir: Path) -> bytes:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(workdir / "optimized.onnx")
    opts.log_severity_level = 3
    ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])
    return (workdir / "optimized.onnx").read_bytes()


def _quantized(onnx_bytes: bytes, workdir: Path) -> bytes:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = workdir / "in.onnx", workdir / "quantized.onnx"
    src.write_bytes(onnx_bytes)
    quantize_dynamic(
        src,
        dst,
        weight_type=QuantType.QInt8,
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    return dst.read_bytes()


def optimize(
    onnx_bytes: bytes,
    *,
    feed: dict[str, np.ndarray] | None = None,
    quantize: bool = True,
    tolerance: float = 1e-2,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> ConvertedVariant:
    """Build the variant of a model. ``feed``: rows to compare on (default: synthesized
    from the input specs; pass real rows, e.g. the self-test inputs, for a meaningful
    parity)."""
    from converters.build import _synthetic_feed

    base = check_onnx(onnx_bytes, max_bytes=max_bytes)
    inputs, outputs = tensor_specs(base)
    feed = feed if feed is not None else _synthetic_feed(inputs, rows=64)
    with tempfile.TemporaryDirectory(prefix="edgefleet-opt-") as tmp:
        workdir = Path(tmp)
        candidates = [("optimized", _graph_optimized(onnx_bytes, workdir))]
        if quantize:
            # Skipped when nothing is quantizable or an op defeats the quantizer.
            with contextlib.suppress(Exception):
                candidates.insert(0, ("quantized", _quantized(onnx_bytes, workdir)))
        candidates = [(kind, _normalized(data, base)) for kind, data in candidates]
    errors: list[str] = []
    built: list[ConvertedVariant] = []
    for kind, variant in candidates:
        try:
            checked = check_onnx(variant, max_bytes=max_bytes)
        except ConverterError as e:  # e.g. a fused op outside ai.onnx: agents refuse it
            errors.append(f"{kind}: {e}")
            continue
        base_sess, var_sess = session(onnx_bytes), session(variant)
        expected, actual = run(base_sess, feed), run(var_sess, feed)
        roles = {
            s.name: ("label" if s.datatype in ("INT64", "INT32", "BYTES") else "scores")
            for s in outputs
        }
        report, _ = compare(expected, actual, roles, tolerance=tolerance, source="feed")
        one = {n: a[:1] for n, a in feed.items()}
        var_inputs, var_outputs = tensor_specs(checked)
        built.append(
            ConvertedVariant(
                onnx_bytes=variant,
                sha256=hashlib.sha256(variant).hexdigest(),
                kind=kind,
                size_ratio=len(variant) / len(onnx_bytes),
                latency_ratio=_latency(var_sess, one) / _latency(base_sess, one),
                parity=report,
                inputs=var_inputs,
                outputs=var_outputs,
                opset=opsets(checked)[""],
                ort_min=ort_min(checked),
            )
        )
    # The quantized variant only when it is smaller and within tolerance; else optimized.
    for choice in built:
        if choice.kind == "optimized" or (choice.size_ratio < 1 and choice.parity["passed"]):
            return choice
    raise ConverterError("no variant passed the checks: " + "; ".join(errors))
