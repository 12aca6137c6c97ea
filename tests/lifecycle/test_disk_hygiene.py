"""Disk hygiene on a real agent: only the newest ``keep_versions`` stay installed, downloads
do not pile up, and a disk below its free-space reserve fails the update cleanly."""

from __future__ import annotations

from pathlib import Path

from tests.lifecycle.conftest import Pipeline
from tests.lifecycle.support import (
    Device,
    assert_one_complete_version,
    deploy_and_wait,
    wait_for,
)
from tests.support.fleet import RunningServer

MODEL = "hygiene"


def test_keep_versions_prunes_and_a_full_disk_fails_cleanly(
    fleet: RunningServer, pipeline: Pipeline, tmp_path: Path
) -> None:
    client = fleet.client
    for v in range(1, 5):
        assert client.publish(MODEL, pipeline.model, sample=pipeline.sample)["version"] == v
    dev = Device.enroll(fleet, tmp_path, "hygienic", EDGE_AGENT_KEEP_VERSIONS="2")
    try:
        dev.start()
        for v in range(1, 5):
            assert deploy_and_wait(client, MODEL, v, dev.device_id)["status"] == "active"
            wait_for(dev.settled, 30, "no update step left")
            assert dev.versions_on_disk(MODEL) == list(range(max(1, v - 1), v + 1))
        assert_one_complete_version(dev, MODEL, 4)
        targets = dev.data_dir / "tuf" / "targets"
        downloads = [p.name for p in targets.iterdir() if p.name.endswith("model.onnx")]
        assert downloads == [], f"staged downloads left in the TUF cache: {downloads}"

        # A disk below its reserve: the update fails before anything is downloaded.
        dev.stop()
        dev.env["EDGE_AGENT_MIN_FREE_BYTES"] = str(1 << 60)
        dev.start()
        status = deploy_and_wait(client, MODEL, 1, dev.device_id)
        assert (status["status"], status["reason"]) == ("failed", "disk_full"), status
        wait_for(dev.settled, 30, "no update step left")
        assert dev.infer(MODEL, pipeline.row)["model_version"] == "4"
        assert_one_complete_version(dev, MODEL, 4)
        assert dev.versions_on_disk(MODEL) == [3, 4]
    finally:
        dev.stop()


def test_redeploying_the_active_version_reports_active(
    fleet: RunningServer, pipeline: Pipeline, tmp_path: Path
) -> None:
    """A second deployment of the version already serving must not stay pending."""
    client = fleet.client
    published = client.publish("again", pipeline.model, sample=pipeline.sample)
    dev = Device.enroll(fleet, tmp_path, "again")
    try:
        dev.start()
        v = published["version"]
        assert deploy_and_wait(client, "again", v, dev.device_id)["status"] == "active"
        assert deploy_and_wait(client, "again", v, dev.device_id, 30)["status"] == "active"
    finally:
        dev.stop()
