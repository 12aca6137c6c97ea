"""A model whose signed self-test cannot pass on the device fails its health gate over the
real path (publish, sign, MQTT, TUF, load, self-test): reported, and v1 keeps serving."""

from __future__ import annotations

from pathlib import Path

from tests.lifecycle.conftest import Pipeline
from tests.lifecycle.support import (
    Device,
    assert_one_complete_version,
    deploy_and_wait,
    random_onnx_model,
    wait_for,
)
from tests.support.fleet import RunningServer

MODEL = "gate"


def test_model_failing_its_selftest_on_the_device_is_refused_and_v1_serves(
    fleet: RunningServer, pipeline: Pipeline, tmp_path: Path
) -> None:
    client = fleet.client
    assert client.publish(MODEL, pipeline.model, sample=pipeline.sample)["version"] == 1
    # RandomUniformLike: the outputs the server recorded for the self-test rows cannot be
    # reproduced by any later run, so the device's gate must refuse it.
    noisy = client.publish(MODEL, random_onnx_model(30), filename="noisy.onnx")
    assert noisy["version"] == 2
    dev = Device.enroll(fleet, tmp_path, "gatekeeper")
    try:
        dev.start()
        assert deploy_and_wait(client, MODEL, 1, dev.device_id)["status"] == "active"
        status = deploy_and_wait(client, MODEL, 2, dev.device_id)
        assert (status["status"], status["reason"]) == ("failed", "selftest_failed"), status
        assert "beyond tolerance" in status["message"]
        wait_for(dev.settled, 30, "no update step left")
        assert dev.infer(MODEL, pipeline.row)["model_version"] == "1"
        assert_one_complete_version(dev, MODEL, 1)
        assert dev.versions_on_disk(MODEL) == [1]  # the refused version's files are gone
        alerts = [a for a in client.alerts() if a.get("device_id") == dev.device_id]
        assert any("selftest_failed" in str(a) for a in alerts), alerts
    finally:
        dev.stop()
