"""Rules of the update runner at unit level (in-memory trust and serving doubles)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent import protocol
from edge_agent.exceptions import ModelLoadError
from edge_agent.lifecycle import UpdateRunner
from edge_agent.store import AgentState, ModelStore
from tests.agent.test_lifecycle_table import FakeFetcher, Recorder, _assigned


class CountingFetcher(FakeFetcher):
    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp)
        self.downloads: list[Path] = []

    def model_file(self, package: protocol.ModelPackage) -> Path:
        path = super().model_file(package)
        self.downloads.append(path)
        return path


def _updated(tmp: Path, runner: UpdateRunner, state: AgentState, version: int) -> None:
    runner.begin(state, _assigned(version))
    runner.run(state, FakeFetcher(tmp))


def test_a_deployment_that_ended_is_not_retried_by_a_later_assignment(tmp_path: Path) -> None:
    store, rec = ModelStore(tmp_path), Recorder()
    state = AgentState(active={"m": 1})
    runner = UpdateRunner(store, rec, rec.activator(warm_fails=True))
    _updated(tmp_path, runner, state, 2)
    assert rec.reports[-1] == ("failed", "selftest_failed")
    reports = len(rec.reports)
    runner.begin(state, _assigned(2))  # same deployment id, listed again
    assert state.step is None and len(rec.reports) == reports
    assert store.load_state().concluded == {"m": "dep-1"}


def test_redeploying_the_active_version_reports_active_at_once(tmp_path: Path) -> None:
    store, rec = ModelStore(tmp_path), Recorder()
    state = AgentState(active={"m": 2})
    UpdateRunner(store, rec, rec.activator()).begin(state, _assigned(2))
    assert state.step is None and rec.reports == [("active", "")]


def test_free_space_below_the_reserve_fails_before_the_download(tmp_path: Path) -> None:
    store, rec = ModelStore(tmp_path), Recorder()
    state = AgentState(active={"m": 1})
    fetcher = CountingFetcher(tmp_path)
    runner = UpdateRunner(store, rec, rec.activator(), min_free_bytes=store.free_bytes() * 2)
    runner.begin(state, _assigned(2))
    runner.run(state, fetcher)
    assert rec.reports[-1] == ("failed", "disk_full")
    assert fetcher.downloads == [] and state.active == {"m": 1}
    assert not store.version_dir("m", 2).exists()


def test_staged_download_is_removed_and_the_store_keeps_the_copy(tmp_path: Path) -> None:
    store, rec = ModelStore(tmp_path), Recorder()
    state = AgentState()
    fetcher = CountingFetcher(tmp_path)
    runner = UpdateRunner(store, rec, rec.activator())
    runner.begin(state, _assigned(1))
    runner.run(state, fetcher)
    assert [p.exists() for p in fetcher.downloads] == [False]
    assert store.installed("m", 1) is not None


def test_failed_switch_saves_the_previous_version_before_rolling_back(tmp_path: Path) -> None:
    store, rec = ModelStore(tmp_path), Recorder()
    state = AgentState(active={"m": 1}, deployments={"m": "dep-0"})
    saved: dict[str, dict[str, int]] = {}

    def on_state(s: str) -> None:
        saved[s] = store.load_state().active

    runner = UpdateRunner(store, rec, rec.activator(), crash_hook=on_state, fail_in="switching")
    _updated(tmp_path, runner, state, 2)
    assert saved["rolling_back"] == {"m": 1}  # a crash here restarts on v1
    assert rec.serving["m"] == 1 and rec.reports[-1][0] == "rolled_back"
    assert state.active == {"m": 1} and state.deployments == {"m": "dep-0"}
    assert not store.version_dir("m", 2).exists()  # the version that did not make it


@pytest.mark.parametrize("seam", ["fetching", "verifying", "staging", "warming"])
def test_fail_seam_before_switching_ends_failed_with_the_old_version(
    tmp_path: Path, seam: str
) -> None:
    store, rec = ModelStore(tmp_path), Recorder()
    state = AgentState(active={"m": 1})
    _updated(tmp_path, UpdateRunner(store, rec, rec.activator(), fail_in=seam), state, 2)
    assert rec.reports[-1] == ("failed", "internal") and state.active == {"m": 1}
    assert not store.version_dir("m", 2).exists()


def test_install_removes_temp_files_of_an_interrupted_copy(tmp_path: Path) -> None:
    store, rec = ModelStore(tmp_path), Recorder()
    d = store.version_dir("m", 1)
    d.mkdir(parents=True)
    (d / ".model.onnx.abc123").write_bytes(b"half")
    _updated(tmp_path, UpdateRunner(store, rec, rec.activator()), AgentState(), 1)
    assert sorted(p.name for p in d.iterdir()) == ["model.onnx", "package.json"]


def test_an_error_while_rolling_back_keeps_the_saved_state_for_the_next_cycle(
    tmp_path: Path,
) -> None:
    store, rec = ModelStore(tmp_path), Recorder()
    state = AgentState(active={"m": 1})
    activator = rec.activator()
    restore = activator.restore
    broken = [True]

    def flaky_restore(name: str, version: int | None) -> None:
        if broken[0]:
            raise ModelLoadError("cannot load v1 right now")
        restore(name, version)

    activator.restore = flaky_restore
    runner = UpdateRunner(store, rec, activator, fail_in="switching")
    runner.begin(state, _assigned(2))
    with pytest.raises(ModelLoadError):
        runner.run(state, FakeFetcher(tmp_path))
    saved = store.load_state()
    assert saved.step is not None and saved.step.state == "rolling_back"
    assert saved.active == {"m": 1}
    broken[0] = False
    runner.run(state, FakeFetcher(tmp_path))  # the next update cycle
    assert state.step is None and rec.serving["m"] == 1
    assert rec.reports[-1][0] == "rolled_back"
