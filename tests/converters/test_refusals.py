"""Uploads the server must refuse, and the messages that tell the user what to do."""

from __future__ import annotations

import io
import os
import pickle

import joblib
import numpy as np
import onnx
import pandas as pd
import pytest
import skops.io as sio
from onnx import TensorProto, helper
from sklearn.kernel_ridge import KernelRidge
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import NearestCentroid
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

import converters
from converters.exceptions import (
    ConverterError,
    ModelCheckError,
    UnsafeModelError,
    UnsupportedModelError,
)
from converters.result import ConvertedModel
from tests.converters.matrix import to_csv


def test_unsupported_estimator_is_named(
    iris_model: tuple[LogisticRegression, pd.DataFrame],
) -> None:
    _, frame = iris_model
    x = frame.to_numpy()
    model = KernelRidge().fit(x, x[:, 0])
    with pytest.raises(UnsupportedModelError, match="KernelRidge") as err:
        converters.convert_estimator(model, to_csv(frame))
    assert err.value.estimator is not None and err.value.estimator.endswith("KernelRidge")


def test_unsupported_step_inside_a_pipeline_is_named(
    iris_model: tuple[LogisticRegression, pd.DataFrame],
) -> None:
    model, frame = iris_model
    pipe = make_pipeline(StandardScaler(), NearestCentroid()).fit(
        frame.to_numpy(), model.predict(frame.to_numpy())
    )
    with pytest.raises(UnsupportedModelError, match=r"NearestCentroid.*inside Pipeline"):
        converters.convert_estimator(pipe, to_csv(frame))


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_pickle_upload_is_refused_with_the_fleetctl_hint(
    iris_model: tuple[LogisticRegression, pd.DataFrame], protocol: int
) -> None:
    model, _ = iris_model
    data = pickle.dumps(model, protocol=protocol)
    with pytest.raises(UnsafeModelError, match="fleetctl models convert"):
        converters.convert(data, filename="model.bin")


@pytest.mark.parametrize("compress", [0, 3, ("gzip", 3), ("xz", 3)])
def test_joblib_upload_is_refused_with_the_fleetctl_hint(
    iris_model: tuple[LogisticRegression, pd.DataFrame], compress: object
) -> None:
    model, _ = iris_model
    buf = io.BytesIO()
    joblib.dump(model, buf, compress=compress)
    with pytest.raises(UnsafeModelError, match="fleetctl models convert"):
        converters.convert(buf.getvalue(), filename="upload")


def test_pickle_that_would_run_code_is_refused_without_running_it(tmp_path: object) -> None:
    class Boom:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, ("touch /tmp/edgefleet-pwned",))

    data = pickle.dumps(Boom())
    with pytest.raises(UnsafeModelError):
        converters.convert(data, filename="model.onnx")  # a lying file name changes nothing
    assert not os.path.exists("/tmp/edgefleet-pwned")


@pytest.mark.parametrize(
    "data",
    [os.urandom(4096), b"", b"hello world, not a model", b"\x08\x07" + os.urandom(200)],
    ids=["random", "empty", "text", "protobuf-looking"],
)
def test_bytes_that_are_no_model_give_a_clear_error(data: bytes) -> None:
    with pytest.raises(ConverterError, match=r"(not a recognised model|empty)"):
        converters.convert(data, filename="x")


def test_zip_that_is_not_skops_is_refused() -> None:
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", b"\x80\x04N.")
    with pytest.raises(UnsupportedModelError, match="not a skops file"):
        converters.convert(buf.getvalue(), filename="model.pt")


def _with_external_data(model: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    init = m.graph.initializer[0]
    init.ClearField("raw_data")
    init.ClearField("float_data")
    init.data_location = TensorProto.EXTERNAL
    init.external_data.add(key="location", value="../../../../etc/passwd")
    return m


def test_onnx_with_external_data_is_refused() -> None:
    weights = helper.make_tensor("weights", TensorProto.FLOAT, [3], [1.0, 2.0, 3.0])
    model = _tiny_graph(helper.make_node("Add", ["input", "weights"], ["out"], name="add"))
    model.graph.initializer.append(weights)
    converters.convert(model.SerializeToString(), filename="m.onnx")  # fine as it is
    bad = _with_external_data(model).SerializeToString()
    with pytest.raises(UnsafeModelError, match="external file") as err:
        converters.convert(bad, filename="m.onnx")
    assert err.value.check == "external_data"
    assert err.value.node == "weights"


def test_onnx_with_external_data_in_a_constant_attribute_is_refused() -> None:
    value = helper.make_tensor("c", TensorProto.FLOAT, [3], [1.0, 2.0, 3.0])
    value.ClearField("float_data")
    value.data_location = TensorProto.EXTERNAL
    value.external_data.add(key="location", value="/etc/shadow")
    const = helper.make_node("Constant", [], ["k"], name="const_node", value=value)
    add = helper.make_node("Add", ["input", "k"], ["out"], name="add")
    with pytest.raises(UnsafeModelError, match="const_node") as err:
        converters.convert(_tiny_graph(const, add).SerializeToString(), filename="m.onnx")
    assert err.value.check == "external_data"


def _tiny_graph(
    *nodes: onnx.NodeProto, opsets: list[tuple[str, int]] | None = None
) -> onnx.ModelProto:
    graph = helper.make_graph(
        list(nodes),
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 3])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [None, 3])],
    )
    imports = [helper.make_opsetid(d, v) for d, v in (opsets or [("", 17)])]
    return helper.make_model(graph, opset_imports=imports, ir_version=8)


def test_onnx_with_a_custom_domain_node_is_refused_naming_the_node() -> None:
    node = helper.make_node("Backdoor", ["input"], ["out"], name="evil_node", domain="com.evil")
    model = _tiny_graph(node, opsets=[("", 17), ("com.evil", 1)])
    with pytest.raises(UnsafeModelError, match=r"com\.evil") as err:
        converters.convert(model.SerializeToString(), filename="m.onnx")
    assert err.value.check == "domains"


def test_custom_domain_node_is_named_even_when_the_opset_import_hides_it() -> None:
    node = helper.make_node("Backdoor", ["input"], ["out"], name="evil_node", domain="com.evil")
    model = _tiny_graph(node)
    with pytest.raises(UnsafeModelError, match="evil_node") as err:
        converters.convert(model.SerializeToString(), filename="m.onnx")
    assert err.value.node == "evil_node"


def test_onnx_opset_newer_than_the_agents_floor_is_refused() -> None:
    model = _tiny_graph(helper.make_node("Relu", ["input"], ["out"], name="r"), opsets=[("", 21)])
    with pytest.raises(ModelCheckError, match="opset 21") as err:
        converters.convert(model.SerializeToString(), filename="m.onnx")
    assert err.value.check == "opset"


def test_onnx_that_fails_the_checker_names_the_check_and_node() -> None:
    node = helper.make_node("Add", ["input", "missing"], ["out"], name="broken_add")
    model = _tiny_graph(node)
    with pytest.raises(ModelCheckError) as err:
        converters.convert(model.SerializeToString(), filename="m.onnx")
    assert err.value.check in ("onnx_checker", "shape_inference")
    assert "broken_add" in str(err.value) or err.value.node == "broken_add"


def test_onnx_with_zipmap_output_is_refused(
    iris_model: tuple[LogisticRegression, pd.DataFrame],
) -> None:
    from skl2onnx import to_onnx

    model, frame = iris_model
    onx = to_onnx(model, frame.to_numpy(np.float32)[:1], target_opset={"": 17, "ai.onnx.ml": 3})
    with pytest.raises(ModelCheckError, match="zipmap") as err:
        converters.convert(onx.SerializeToString(), filename="m.onnx")
    assert err.value.check == "io_types"


def test_oversized_upload_is_refused_before_parsing(iris_converted: ConvertedModel) -> None:
    with pytest.raises(UnsafeModelError, match="limit") as err:
        converters.convert(iris_converted.onnx_bytes, filename="m.onnx", max_bytes=100)
    assert err.value.check == "size"


def test_skops_with_a_function_that_runs_commands_is_refused() -> None:
    model = FunctionTransformer(func=os.system).fit(np.zeros((2, 1)))
    with pytest.raises(UnsafeModelError, match="system") as err:
        converters.convert(sio.dumps(model), filename="m.skops")
    assert err.value.check == "skops_types"


def test_skops_with_a_library_function_is_refused_only_classes_are_trusted() -> None:
    from sklearn.datasets import fetch_openml

    model = FunctionTransformer(func=fetch_openml).fit(np.zeros((2, 1)))
    with pytest.raises(UnsafeModelError, match="fetch_openml"):
        converters.convert(sio.dumps(model), filename="m.skops")


class HomeMade(LogisticRegression):  # type: ignore[misc]
    """A class from outside the trusted libraries."""


def test_skops_with_an_unknown_class_is_refused(
    iris_model: tuple[LogisticRegression, pd.DataFrame],
) -> None:
    _, frame = iris_model
    x = frame.to_numpy()
    model = HomeMade().fit(x, (x[:, 0] > 5.8).astype(int))
    with pytest.raises(UnsafeModelError, match="HomeMade"):
        converters.convert(sio.dumps(model), filename="m.skops")
