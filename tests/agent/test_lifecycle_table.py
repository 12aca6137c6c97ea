"""The update state machine with in-memory doubles for trust and serving (unit level)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent import protocol
from edge_agent.exceptions import HealthGateError, UpdateError
from edge_agent.lifecycle import MAX_ATTEMPTS, RESUME, TRANSITIONS, Activator, UpdateRunner
from edge_agent.store import AgentState, ModelStore, UpdateStep


def _package(version: int) -> protocol.ModelPackage:
    return protocol.ModelPackage(
        name="m",
        version=version,
        model_target=protocol.model_target_path("m", version),
        model_sha256="0" * 64,
        inputs=(),
        outputs=(),
        opset=17,
        ort_min="1.17",
    )


class FakeFetcher:
    def __init__(self, tmp: Path, fail: UpdateError | None = None) -> None:
        self.tmp, self.fail, self.calls = tmp, fail, 0

    def package(self, path: str) -> protocol.ModelPackage:
        self.calls += 1
        if self.fail:
            raise self.fail
        return _package(int(path.split("/")[2]))

    def model_file(self, package: protocol.ModelPackage) -> Path:
        f = self.tmp / f"fetched-{package.version}.onnx"
        f.write_bytes(b"onnx-bytes")
        return f


class Recorder:
    def __init__(self) -> None:
        self.reports: list[tuple[str, str]] = []
        self.serving: dict[str, int | None] = {}

    def deployment(self, step: UpdateStep, status: str) -> None:
        self.reports.append((status, step.reason))

    def activator(self, warm_fails: bool = False, switch_fails: bool = False) -> Activator:
        def warm(package: protocol.ModelPackage, path: Path) -> object:
            if warm_fails:
                raise HealthGateError("selftest_failed", "outputs differ")
            return package.version

        def switch(obj: object) -> None:
            if switch_fails:
                raise UpdateError("internal", "swap failed")
            self.serving["m"] = int(obj)  # type: ignore[call-overload]

        def restore(name: str, version: int | None) -> None:
            self.serving[name] = version

        return Activator(warm, switch, restore)


def _assigned(version: int) -> protocol.AssignedModel:
    return protocol.AssignedModel("m", version, protocol.package_target_path("m", version), "dep-1")


def test_every_state_has_a_resume_rule_and_two_exits() -> None:
    states = {s for s, _ in TRANSITIONS}
    assert states - {"committed", "failed", "rolling_back"} <= set(RESUME)
    for s in ("fetching", "verifying", "staging", "warming", "switching"):
        assert (s, "ok") in TRANSITIONS and (s, "fail") in TRANSITIONS


def test_update_commits_and_reports_active(tmp_path: Path) -> None:
    store, rec = ModelStore(tmp_path), Recorder()
    state = AgentState()
    runner = UpdateRunner(store, rec, rec.activator())
    runner.begin(state, _assigned(1))
    runner.run(state, FakeFetcher(tmp_path))
    assert state.active == {"m": 1} and state.step is None
    assert rec.reports == [("downloading", ""), ("active", "")]
    assert store.load_state().active == {"m": 1}
    assert (store.version_dir("m", 1) / "model.onnx").read_bytes() == b"onnx-bytes"


def test_failed_health_gate_keeps_the_old_model(tmp_path: Path) -> None:
    store, rec = ModelStore(tmp_path), Recorder()
    state = AgentState(active={"m": 1})
    UpdateRunner(store, rec, rec.activator(warm_fails=True)).begin(state, _assigned(2))
    UpdateRunner(store, rec, rec.activator(warm_fails=True)).run(state, FakeFetcher(tmp_path))
    assert state.active == {"m": 1}
    assert rec.reports[-1] == ("failed", "selftest_failed")


def test_failed_switch_rolls_back_to_the_previous_version(tmp_path: Path) -> None:
    store, rec = ModelStore(tmp_path), Recorder()
    state = AgentState(active={"m": 1})
    runner = UpdateRunner(store, rec, rec.activator(switch_fails=True))
    runner.begin(state, _assigned(2))
    runner.run(state, FakeFetcher(tmp_path))
    assert state.active == {"m": 1}
    assert rec.serving["m"] == 1
    assert rec.reports[-1][0] == "rolled_back"


def test_refused_download_reports_the_reason_code(tmp_path: Path) -> None:
    store, rec = ModelStore(tmp_path), Recorder()
    state = AgentState(active={"m": 1})
    runner = UpdateRunner(store, rec, rec.activator())
    runner.begin(state, _assigned(2))
    runner.run(state, FakeFetcher(tmp_path, fail=UpdateError("hash_mismatch", "bit flipped")))
    assert state.active == {"m": 1}
    assert rec.reports[-1] == ("failed", "hash_mismatch")


@pytest.mark.parametrize("saved", ["fetching", "verifying", "staging", "warming", "switching"])
def test_interrupted_update_resumes_to_one_complete_version(tmp_path: Path, saved: str) -> None:
    store, rec = ModelStore(tmp_path), Recorder()
    state = AgentState(active={"m": 1})
    runner = UpdateRunner(store, rec, rec.activator())
    runner.begin(state, _assigned(2))
    if saved in ("warming", "switching"):  # these states find the staged files on disk
        store.install(
            _package(2), _package(2).to_bytes(), FakeFetcher(tmp_path).model_file(_package(2))
        )
    assert state.step is not None
    state.step.state = saved
    store.save_state(state)
    # a new process: fresh runner, state read back from disk
    state = store.load_state()
    runner = UpdateRunner(store, rec, rec.activator())
    runner.resume(state)
    runner.run(state, FakeFetcher(tmp_path))
    assert state.step is None and state.active == {"m": 2}
    assert rec.reports[-1] == ("active", "")


def test_crash_loop_gives_up_after_max_attempts(tmp_path: Path) -> None:
    store, rec = ModelStore(tmp_path), Recorder()
    state = AgentState(active={"m": 1})
    runner = UpdateRunner(store, rec, rec.activator())
    runner.begin(state, _assigned(2))
    for _ in range(MAX_ATTEMPTS + 1):
        runner.resume(state)
    runner.run(state, FakeFetcher(tmp_path))
    assert state.active == {"m": 1}
    assert rec.reports[-1] == ("failed", "internal")


def test_prune_keeps_the_newest_versions_and_the_active_one(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, keep_versions=2)
    for v in range(1, 6):
        (store.version_dir("m", v)).mkdir(parents=True)
    removed = store.prune("m", keep={1})
    assert sorted(removed) == [2, 3]
    assert sorted(int(p.name) for p in (tmp_path / "models" / "m").iterdir()) == [1, 4, 5]
