"""The conversion flows end to end: skops and ONNX uploads, parity failures, samples,
profile and self-test content."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
import skops.io as sio
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression

import converters
import converters.sklearn_onnx
from converters.exceptions import ParityError, SampleError
from converters.loading import convert_pickle_locally
from converters.result import ConvertedModel
from tests.converters.matrix import CASES, to_csv

IrisModel = tuple[LogisticRegression, pd.DataFrame]


def _case(name: str) -> tuple[object, pd.DataFrame]:
    return next(c for c in CASES if c.name == name).build()


def test_skops_upload_of_tree_models_converts_through_the_reviewed_allow_list() -> None:
    model, frame = _case("HistGradientBoostingClassifier")
    result = converters.convert(sio.dumps(model), filename="m.skops", sample=to_csv(frame))
    assert result.parity["passed"]
    assert result.framework["name"] == "scikit-learn"
    assert result.framework["estimator"] == "HistGradientBoostingClassifier"


def test_skops_upload_of_lightgbm_converts() -> None:
    pytest.importorskip("lightgbm")
    model, frame = _case("LGBMClassifier")
    result = converters.convert(sio.dumps(model), filename="m.skops", sample=to_csv(frame))
    assert result.parity["passed"]
    assert result.framework["name"] == "lightgbm"
    assert "onnxmltools" in result.converter_versions


def test_result_is_json_ready_and_describes_the_model(iris_converted: ConvertedModel) -> None:
    r = iris_converted
    json.dumps({"parity": r.parity, "profile": r.profile, "selftest": r.selftest})
    assert [s.name for s in r.inputs] == ["input"]
    assert r.inputs[0].datatype == "FP32" and r.inputs[0].shape == (-1, 4)
    assert [(s.name, s.datatype) for s in r.outputs] == [
        ("label", "INT64"),
        ("probabilities", "FP32"),
    ]
    assert r.opset == 17 and r.ort_min == "1.17"
    assert len(r.sha256) == 64 and r.sample_sha256 is not None
    assert {"skl2onnx", "onnx", "onnxruntime", "scikit-learn"} <= set(r.converter_versions)
    with pytest.raises(AttributeError):
        r.opset = 3  # type: ignore[misc]


def test_selftest_rows_use_the_original_models_outputs(
    iris_model: IrisModel, iris_converted: ConvertedModel
) -> None:
    model, _ = iris_model
    st = iris_converted.selftest
    x = st["inputs"]["input"]
    assert x["datatype"] == "FP32" and x["shape"][1] == 4 and 0 < x["shape"][0] <= 16
    rows = np.array(x["data"]).reshape(x["shape"])
    assert st["outputs"]["label"]["data"] == model.predict(rows).tolist()
    np.testing.assert_allclose(
        np.array(st["outputs"]["probabilities"]["data"]).reshape(-1, 3),
        model.predict_proba(rows.astype(np.float32).astype(np.float64)),
        atol=1e-6,
    )


def test_profile_has_inner_decile_edges_scores_and_class_mix(
    iris_converted: ConvertedModel,
) -> None:
    p = iris_converted.profile
    assert p["rows"] == 50 and len(p["features"]) == 4
    f0 = p["features"][0]
    assert f0["kind"] == "numeric" and f0["input"] == "input" and f0["index"] == 0
    assert 1 <= len(f0["edges"]) <= 9 and f0["edges"] == sorted(f0["edges"])
    assert sum(f0["counts"]) == 50 and len(f0["counts"]) == len(f0["edges"]) + 1
    assert p["score"]["output"] == "probabilities" and p["score"]["reduce"] == "max"
    assert abs(sum(p["classes"]["mix"].values()) - 1.0) < 1e-9


def test_categorical_columns_become_string_inputs_with_a_vocabulary() -> None:
    model, frame = _case("ColumnTransformer(OneHotEncoder+StandardScaler)+LogisticRegression")
    result = converters.convert_estimator(model, to_csv(frame))
    specs = {s.name: s.datatype for s in result.inputs}
    assert specs == {"age": "FP32", "income": "FP32", "city": "BYTES", "plan": "BYTES"}
    city = next(f for f in result.profile["features"] if f["name"] == "city")
    assert city["kind"] == "categorical" and city["vocabulary"] == ["lyon", "nice", "paris"]
    assert result.selftest["inputs"]["city"]["datatype"] == "BYTES"
    assert all(isinstance(v, str) for v in result.selftest["inputs"]["city"]["data"])


def test_dataframe_sample_works_in_python() -> None:
    model, frame = _case("ColumnTransformer(OneHotEncoder+StandardScaler)+LogisticRegression")
    result = converters.convert_estimator(model, frame)
    assert result.parity["passed"] and result.parity["rows"] == len(frame)


def test_without_a_sample_rows_are_synthesized_and_no_profile_is_claimed(
    iris_model: IrisModel,
) -> None:
    model, _ = iris_model
    result = converters.convert_estimator(model)
    assert result.parity["source"] == "synthetic" and result.parity["passed"]
    assert result.profile == {}
    assert result.sample_sha256 is None
    assert result.selftest["inputs"]["input"]["shape"][1] == 4


def test_without_a_sample_categorical_rows_come_from_the_encoder() -> None:
    model, _ = _case("ColumnTransformer(OneHotEncoder+StandardScaler)+LogisticRegression")
    result = converters.convert_estimator(model)
    assert set(result.selftest["inputs"]["city"]["data"]) <= {"lyon", "nice", "paris"}


def test_tolerance_zero_on_float_noise_fails_parity_unless_forced() -> None:
    model, frame = _case("LogisticRegression")
    with pytest.raises(ParityError) as err:
        converters.convert_estimator(model, to_csv(frame), tolerance=0.0)
    report = err.value.report
    assert not report["passed"] and report["outputs"]["probabilities"]["violations"] > 0
    json.dumps(report)
    forced = converters.convert_estimator(model, to_csv(frame), tolerance=0.0, force=True)
    assert forced.parity["forced"] and not forced.parity["passed"]


def test_a_tampered_conversion_fails_parity(
    iris_model: IrisModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, frame = iris_model
    real = converters.sklearn_onnx.to_onnx

    def altered(estimator: object, layout: object) -> onnx.ModelProto:
        onx = real(estimator, layout)  # type: ignore[arg-type]
        for node in onx.graph.node:
            for attr in node.attribute:
                if attr.name == "coefficients":
                    attr.floats[0] += 0.5  # a subtly wrong weight
        return onx

    monkeypatch.setattr(converters.sklearn_onnx, "to_onnx", altered)
    with pytest.raises(ParityError, match="probabilities") as err:
        converters.convert_estimator(model, to_csv(frame))
    assert err.value.report["outputs"]["probabilities"]["violations"] > 0


def test_onnx_upload_is_checked_and_run_once(iris_converted: ConvertedModel) -> None:
    result = converters.convert(iris_converted.onnx_bytes, filename="model.onnx")
    assert result.sha256 == iris_converted.sha256
    assert result.parity["compared"] is False and result.parity["passed"]
    assert result.framework["name"] == "onnx" and "skl2onnx" in result.framework["version"]
    assert result.selftest["outputs"]["probabilities"]["shape"][1] == 3
    assert result.profile == {}


def test_onnx_upload_with_a_sample_gets_a_profile_and_selftest_from_onnxruntime(
    iris_model: IrisModel, iris_converted: ConvertedModel
) -> None:
    _, frame = iris_model
    result = converters.convert(
        iris_converted.onnx_bytes, filename="model.onnx", sample=to_csv(frame)
    )
    assert result.parity["source"] == "sample" and result.parity["rows"] == len(frame)
    assert len(result.profile["features"]) == 4
    # The expected outputs are onnxruntime's own for the first sample rows.
    st = result.selftest
    rows = np.array(st["inputs"]["input"]["data"]).reshape(st["inputs"]["input"]["shape"])
    np.testing.assert_allclose(rows, frame.to_numpy()[: len(rows)], rtol=1e-6)
    assert st["outputs"]["label"]["data"] == iris_model[0].predict(rows).tolist()


@pytest.mark.parametrize(
    ("csv", "message"),
    [
        (b"\xff\xfe\x00garbage", "UTF-8"),
        (b"", "empty"),
        (b"1.0,2.0,3.0,4.0\n5,6,7,8\n", "header"),
        (b"f0,f1,f2,f3\n", "no data rows"),
        (b"f0,f1,f2\n1,2,3\n", "expects 4 features"),
        (b"f0,f1,f2,f3\n1,2,3,4,5,6\n", "CSV"),
    ],
    ids=["not-utf8", "empty", "no-header", "header-only", "columns", "ragged"],
)
def test_bad_sample_csv_is_explained(iris_model: IrisModel, csv: bytes, message: str) -> None:
    model, _ = iris_model
    with pytest.raises(SampleError, match=message):
        converters.convert_estimator(model, csv)


def test_sample_missing_a_named_column_is_explained() -> None:
    model, frame = _case("ColumnTransformer(OneHotEncoder+StandardScaler)+LogisticRegression")
    with pytest.raises(SampleError, match="city"):
        converters.convert_estimator(model, to_csv(frame.drop(columns=["city"])))


def test_sample_with_blank_text_cells_is_explained() -> None:
    model, frame = _case("ColumnTransformer(OneHotEncoder+StandardScaler)+LogisticRegression")
    frame = frame.copy()
    frame.loc[3, "city"] = None
    with pytest.raises(SampleError, match="empty cells"):
        converters.convert_estimator(model, to_csv(frame))


def test_sample_rows_are_capped(iris_model: IrisModel) -> None:
    model, frame = iris_model
    result = converters.convert_estimator(model, to_csv(frame), max_rows=10)
    assert result.parity["rows"] == 10


def test_extra_label_column_is_ignored_for_models_fitted_on_named_columns() -> None:
    model, frame = _case("ColumnTransformer(OneHotEncoder+StandardScaler)+LogisticRegression")
    result = converters.convert_estimator(model, to_csv(frame.assign(target=1)))
    assert "target" not in {s.name for s in result.inputs}


def test_convert_pickle_locally_loads_the_engineers_own_file(
    iris_model: IrisModel, tmp_path: Path
) -> None:
    model, frame = iris_model
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(model))
    loaded = convert_pickle_locally(path)
    result = converters.convert_estimator(loaded, to_csv(frame))
    assert result.parity["passed"]


def test_hgb_threshold_ties_are_counted_not_failed() -> None:
    model, frame = _case("HistGradientBoostingClassifier")
    assert isinstance(model, HistGradientBoostingClassifier)
    result = converters.convert_estimator(model, to_csv(frame))
    probs = result.parity["outputs"]["probabilities"]
    assert probs["violations"] == 0 and probs["max_abs"] < 1e-4
    if probs["float_ties"] == 0:  # scikit-learn < 1.8 bins these rows without ties
        pytest.skip("this scikit-learn puts no tree threshold on a sample value here")
    # Self-test rows avoid the ties, so every device can replay them exactly.
    st = result.selftest
    rows = np.array(st["inputs"]["input"]["data"]).reshape(st["inputs"]["input"]["shape"])
    assert rows.shape[0] == 16
    np.testing.assert_allclose(
        np.array(st["outputs"]["probabilities"]["data"]).reshape(16, 2),
        model.predict_proba(rows),
        atol=1e-6,
    )
