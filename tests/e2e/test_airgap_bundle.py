"""Air-gapped delivery: a bundle installs through TUF and the lifecycle, with or without the
daemon running; a tampered or stale bundle is refused and the current model stays."""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from fleet_server.bundle import write_bundle
from fleet_server.local_fleet import AgentProcess
from fleet_server.services import tuf_dir
from tests.support.fleet import breast_cancer_pipeline, running_server

pytestmark = pytest.mark.slow


def _import(bundle: Path, data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "edge_agent.cli",
            "import",
            str(bundle),
            "--data-dir",
            str(data_dir),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _tamper(src: Path, dst: Path) -> None:
    with tarfile.open(src) as tin, tarfile.open(dst, "w:gz") as tout:
        for m in tin.getmembers():
            data = tin.extractfile(m).read() if m.isfile() else b""  # type: ignore[union-attr]
            if m.name.endswith(".model.onnx"):
                data = data[:100] + bytes([data[100] ^ 1]) + data[101:]
            import io

            tout.addfile(m, io.BytesIO(data))


def test_bundles_install_offline_and_bad_ones_are_refused(tmp_path: Path) -> None:
    with running_server(tmp_path / "server") as fleet:
        model, sample, rows, _ = breast_cancer_pipeline(tmp_path)
        fleet.client.publish("cancer", model, sample=sample)
        b1 = write_bundle(tuf_dir(fleet.data_dir), "cancer", 1, tmp_path / "v1.bundle")
        fleet.client.publish("cancer", model, sample=sample)  # v2: newer metadata
        b2 = write_bundle(tuf_dir(fleet.data_dir), "cancer", 2, tmp_path / "v2.bundle")
        agent = AgentProcess(tmp_path / "agent")
        agent.enroll(fleet.url, fleet.client.enrollment_token(), "site-1")

    # The server is gone: the device is on its own from here.
    data = tmp_path / "agent"
    bad = tmp_path / "tampered.bundle"
    _tamper(b1, bad)
    r = _import(bad, data)
    assert r.returncode == 1 and "hash_mismatch" in r.stdout, r.stdout + r.stderr

    r = _import(b1, data)  # no daemon: installed in place
    assert r.returncode == 0, r.stdout + r.stderr
    agent.start()
    try:
        assert agent.infer("cancer", rows.tolist())["model_version"] == "1"
        r = _import(b2, data)  # daemon running: handed over, switched without a restart
        assert r.returncode == 0, r.stdout + r.stderr
        assert agent.infer("cancer", rows.tolist())["model_version"] == "2"
        r = _import(b1, data)  # older metadata than the device has seen: a rollback
        assert r.returncode == 1 and "untrusted_metadata" in r.stdout, r.stdout + r.stderr
        assert agent.infer("cancer", rows.tolist())["model_version"] == "2"
    finally:
        agent.stop()
