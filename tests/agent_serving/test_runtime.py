"""Loading and running models: verification before load, validation before run."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.exceptions import (
    BadRequestError,
    InferenceError,
    ModelLoadError,
    UnknownModelError,
    UpdateError,
)
from edge_agent.local import LocalInference
from edge_agent.protocol import ModelPackage, TensorSpec
from edge_agent.runtime import (
    Limits,
    LoadedModel,
    ModelRefusedError,
    ModelRegistry,
    load_model,
    scan_model,
)
from tests.agent_serving.conftest import BuiltModel, write_model


def _onnx_model(
    nodes: list[Any], inputs: list[Any], outputs: list[Any], initializers: Any = (),
    opsets: Any = (("", 17),),
) -> Any:
    from onnx import helper

    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    m.ir_version = 8
    return m


def _refusal(tmp_path: Path, onnx_bytes: bytes) -> ModelRefusedError:
    path, package = write_model(tmp_path, "bad", 1, onnx_bytes)
    with pytest.raises(ModelLoadError) as info:
        load_model(path, package)
    assert isinstance(info.value, ModelRefusedError)
    return info.value


def test_outputs_equal_onnxruntime_own(clf_v1: BuiltModel) -> None:
    model = load_model(clf_v1.path, clf_v1.package)
    got = model.infer({"X": clf_v1.X})
    want = clf_v1.reference(clf_v1.X)
    assert set(got) == set(want) == {"label", "probabilities"}
    np.testing.assert_array_equal(got["label"], want["label"])
    np.testing.assert_array_equal(got["probabilities"], want["probabilities"])
    assert (model.name, model.version) == ("clf", 1)
    assert [s.name for s in model.inputs] == ["X"]


def test_swapped_file_on_disk_is_refused_by_sha256(clf_v1: BuiltModel, clf_v2: BuiltModel) -> None:
    with pytest.raises(ModelLoadError) as info:
        load_model(clf_v2.path, clf_v1.package)
    assert isinstance(info.value, UpdateError) and info.value.reason == "hash_mismatch"


def test_custom_op_domain_is_refused(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 4])
    custom = _onnx_model([helper.make_node("Evil", ["X"], ["Y"], domain="com.example")],
                         [x], [y], opsets=(("", 17), ("com.example", 1)))
    err = _refusal(tmp_path, custom.SerializeToString())
    assert isinstance(err, UpdateError) and err.reason == "unsafe_model"
    assert "com.example" in str(err)
    # Built-in contrib ops load in onnxruntime even when undeclared: refused all the same.
    gelu = helper.make_node("Gelu", ["X"], ["Y"], domain="com.microsoft")
    contrib = _onnx_model([gelu], [x], [y])
    assert _refusal(tmp_path, contrib.SerializeToString()).reason == "unsafe_model"


def test_custom_domain_inside_a_subgraph_is_refused(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [1])
    c = helper.make_tensor_value_info("C", TensorProto.BOOL, [])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1])
    branch = helper.make_graph([helper.make_node("Gelu", ["X"], ["Y"], domain="com.microsoft")],
                               "then", [], [y])
    ok = helper.make_graph([helper.make_node("Identity", ["X"], ["Y"])], "else", [], [y])
    node = helper.make_node("If", ["C"], ["Y"], then_branch=branch, else_branch=ok)
    m = _onnx_model([node], [c, x], [y])
    assert _refusal(tmp_path, m.SerializeToString()).reason == "unsafe_model"


def test_external_data_is_refused_before_onnxruntime_reads_any_file(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "W")
    m = _onnx_model([helper.make_node("MatMul", ["X", "W"], ["Y"])],
                    [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 4])],
                    [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 4])], [w])
    onnx.save(m, tmp_path / "ext.onnx", save_as_external_data=True, location="w.bin",
              size_threshold=0)
    err = _refusal(tmp_path, (tmp_path / "ext.onnx").read_bytes())
    assert err.reason == "unsafe_model" and "external data" in str(err)


def test_model_asking_onnxruntime_to_load_its_config_is_refused(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    m = _onnx_model([helper.make_node("Identity", ["X"], ["Y"])],
                    [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1])],
                    [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1])])
    helper.set_model_props(m, {"ort_config": '{"session_options": {"intra_op_num_threads": 64}}'})
    assert _refusal(tmp_path, m.SerializeToString()).reason == "unsafe_model"


def test_truncated_model_file_is_refused(clf_v1: BuiltModel, tmp_path: Path) -> None:
    data = clf_v1.path.read_bytes()[:-7]
    with pytest.raises(ModelLoadError):
        scan_model(data)
    assert _refusal(tmp_path, data).reason in ("unsafe_model", "load_failed")


def test_scan_accepts_real_models(clf_v1: BuiltModel) -> None:
    scan_model(clf_v1.path.read_bytes())


def test_non_tensor_output_is_refused_as_incompatible(tmp_path: Path) -> None:
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    X = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    clf = LogisticRegression().fit(X, X[:, 0] > 0)
    onx = to_onnx(clf, X[:1], target_opset=17)  # ZipMap: a sequence of maps
    assert _refusal(tmp_path, onx.SerializeToString()).reason == "incompatible"


def test_package_specs_that_disagree_with_the_model_are_refused(clf_v1: BuiltModel) -> None:
    wrong = replace(clf_v1.package, inputs=(TensorSpec("features", "FP32", (-1, 4)),))
    with pytest.raises(ModelLoadError) as info:
        load_model(clf_v1.path, wrong)
    assert isinstance(info.value, ModelRefusedError) and info.value.reason == "incompatible"


@pytest.fixture(scope="module")
def clf(clf_v1: BuiltModel) -> LoadedModel:
    return load_model(clf_v1.path, clf_v1.package, Limits(max_batch_rows=100))


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"features": np.zeros((1, 4), np.float32)}, "unknown ['features']"),
        ({}, "missing ['X']"),
        ({"X": np.zeros((1, 4)), "Z": np.zeros(1)}, "unknown ['Z']"),
        ({"X": np.zeros((1, 5), np.float32)}, "dimension 1 must be 4"),
        ({"X": np.zeros(4, np.float32)}, "expected 2 dimensions"),
        ({"X": np.array([["a", "b", "c", "d"]])}, "expected float32"),
        ({"X": np.zeros((101, 4), np.float32)}, "at most 100"),
    ],
)
def test_bad_inputs_are_refused_with_a_clear_message(
    clf: LoadedModel, inputs: dict[str, np.ndarray], message: str
) -> None:
    with pytest.raises(BadRequestError, match=message.replace("[", r"\[").replace("]", r"\]")):
        clf.infer(inputs)


def test_safe_dtypes_are_coerced(clf: LoadedModel, clf_v1: BuiltModel) -> None:
    want = clf.infer({"X": clf_v1.X})
    as64 = clf.infer({"X": clf_v1.X.astype(np.float64)})
    np.testing.assert_array_equal(as64["probabilities"], want["probabilities"])
    ints = clf.infer({"X": [[1, 2, 3, 4]]})  # lists and ints become float32
    assert ints["probabilities"].shape == (1, 3)


def test_huge_memory_request_fails_alone_and_the_model_keeps_serving(
    huge_memory_model: tuple[Path, ModelPackage],
) -> None:
    model = load_model(*huge_memory_model)
    with pytest.raises(InferenceError) as info:
        model.infer({"n": np.array([5_000_000_000], np.int64)})  # 20 GB
    assert not isinstance(info.value, BadRequestError)
    assert "memory" in str(info.value).lower() or "alloc" in str(info.value).lower()
    assert model.infer({"n": np.array([3], np.int64)})["y"].tolist() == [1.0, 1.0, 1.0]


def test_registry_serves_several_models_and_swaps_atomically(
    clf_v1: BuiltModel, clf_v2: BuiltModel, huge_memory_model: tuple[Path, ModelPackage],
) -> None:
    registry = ModelRegistry()
    assert not registry.ready()
    with pytest.raises(UnknownModelError):
        registry.get("clf")
    v1, v2 = load_model(clf_v1.path, clf_v1.package), load_model(clf_v2.path, clf_v2.package)
    assert registry.swap(v1) is None
    registry.swap(load_model(*huge_memory_model))
    assert registry.ready() and set(registry.models()) == {"clf", "huge"}
    held = registry.get("clf")
    assert registry.swap(v2) is v1
    assert held.infer({"X": clf_v1.X})  # a reader holding v1 finishes on v1
    assert registry.get("clf") is v2
    assert registry.remove("huge") is not None and set(registry.models()) == {"clf"}


def test_local_api_names_the_version_that_answered(clf_v1: BuiltModel, clf_v2: BuiltModel) -> None:
    registry = ModelRegistry()
    local = LocalInference(registry)
    registry.swap(load_model(clf_v1.path, clf_v1.package))
    result = local.infer("clf", {"X": clf_v1.X[:1]})
    assert result.model_version == 1
    np.testing.assert_array_equal(result.outputs["label"], clf_v1.reference(clf_v1.X[:1])["label"])
    registry.swap(load_model(clf_v2.path, clf_v2.package))
    assert local.infer("clf", {"X": clf_v1.X[:1]}).model_version == 2
    with pytest.raises(UnknownModelError):
        local.infer("nope", {})


def test_concurrent_inference_on_one_session(clf: LoadedModel, clf_v1: BuiltModel) -> None:
    want = clf_v1.reference(clf_v1.X)["label"]
    errors: list[Exception] = []

    def work() -> None:
        try:
            for _ in range(200):
                np.testing.assert_array_equal(clf.infer({"X": clf_v1.X})["label"], want)
        except Exception as e:  # collected for the assertion below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
