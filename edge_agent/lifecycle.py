"""The update state machine: states emit events, transitions live in one table.

Every state is saved (``state.json``) before it runs, and each saved state has a resume rule
(``RESUME``), so a crash or power loss at any point ends with exactly one complete,
verified version active and the deployment reported as committed, failed or rolled back::

    idle -> fetching -> verifying -> staging -> warming -> switching -> committed -> idle
                 \\           \\          \\         \\           \\
                  +-----------+----------+---------+--> failed   +--> rolling_back -> idle

Until ``switching`` the old model serves and nothing needs undoing: a failure ends in
``failed``. ``switching`` writes the new active version and the next state in one atomic
replace of ``state.json``; when it fails, the saved state names the previous version again,
so a crash in ``rolling_back`` restarts on the old model.

A deployment that ended (committed, failed or rolled back) is remembered per model, so a
later assignment that still lists it (any other change bumps the serial) does not retry it;
deploying again makes a new deployment.

Test seams (environment of the agent process): ``EDGE_AGENT_TEST_FAIL_IN=<state>`` makes
that state fail after doing its work (``switching`` fails with the new model swapped in, so
``rolling_back`` has something to undo); the crash seam lives in ``edge_agent.daemon``.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from edge_agent import protocol
from edge_agent.exceptions import EdgeAgentError, UpdateError
from edge_agent.store import AgentState, ModelStore, UpdateStep

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3  # stops a crash loop in one state
FAIL_SEAM_ENV = "EDGE_AGENT_TEST_FAIL_IN"

# (state, event) -> next state
TRANSITIONS: dict[tuple[str, str], str] = {
    ("fetching",     "ok"):   "verifying",
    ("fetching",     "fail"): "failed",
    ("verifying",    "ok"):   "staging",
    ("verifying",    "fail"): "failed",
    ("staging",      "ok"):   "warming",
    ("staging",      "fail"): "failed",
    ("warming",      "ok"):   "switching",
    ("warming",      "fail"): "failed",
    ("switching",    "ok"):   "committed",
    ("switching",    "fail"): "rolling_back",
    ("committed",    "ok"):   "idle",
    ("failed",       "ok"):   "idle",
    ("rolling_back", "ok"):   "idle",
}  # fmt: skip

# What a saved state means after a restart: run it again, or start over from fetching.
RESUME: dict[str, str] = {
    "fetching": "fetching",  # nothing installed yet: fetch again (chunks resume)
    "verifying": "fetching",  # the fetched file is re-verified from the start
    "staging": "staging",  # copying is idempotent (atomic replace)
    "warming": "warming",  # the old model is still active: load and test again
    "switching": "switching",  # switching is idempotent: set active, report
    "committed": "committed",  # report again (the server ingests idempotently)
    "failed": "failed",  # report again
    "rolling_back": "rolling_back",  # restore the previous version, report
}


class Reporter(Protocol):
    def deployment(self, step: UpdateStep, status: str) -> None: ...


class Fetcher(Protocol):
    """Trust side of an update: returns verified bytes and files (see ``edge_agent.trust``)."""

    def package(self, path: str) -> protocol.ModelPackage: ...

    def model_file(self, package: protocol.ModelPackage) -> Path: ...


@dataclass
class Activator:
    """Serving side of an update: load + health gate, then swap into the registry."""

    warm: Callable[[protocol.ModelPackage, Path], object]
    switch: Callable[[object], None]
    restore: Callable[[str, int | None], None]


class UpdateRunner:
    def __init__(
        self,
        store: ModelStore,
        reporter: Reporter,
        activator: Activator,
        crash_hook: Callable[[str], None] | None = None,
        *,
        min_free_bytes: int = 0,
        fail_in: str | None = None,
    ) -> None:
        self.store = store
        self.reporter = reporter
        self.activator = activator
        self.min_free_bytes = max(0, int(min_free_bytes))
        self._crash_hook = crash_hook  # tests: kill the process in a given state
        # tests: make one state fail after its work (see the module docstring)
        self._fail_in = fail_in if fail_in is not None else os.environ.get(FAIL_SEAM_ENV, "")
        self._package: protocol.ModelPackage | None = None
        self._fetched: Path | None = None
        self._warm: object | None = None

    def begin(self, state: AgentState, model: protocol.AssignedModel) -> None:
        """Save a new step for ``model``; a no-op for a deployment that already ended."""
        if state.step is not None:
            raise RuntimeError("an update is already in progress")
        if state.concluded.get(model.name) == model.deployment:
            log.info("deployment %s of %s already ended", model.deployment, model.name)
            return
        if state.active.get(model.name) == model.version:
            # Already serving it (a re-deployment of the active version): report, done.
            step = UpdateStep(model.deployment, model.name, model.version, model.package, "")
            state.deployments[model.name] = model.deployment
            state.concluded[model.name] = model.deployment
            self.store.save_state(state)
            self.reporter.deployment(step, "active")
            return
        state.step = UpdateStep(
            deployment=model.deployment,
            name=model.name,
            version=model.version,
            package=model.package,
            state="fetching",
            previous=state.active.get(model.name),
            previous_deployment=state.deployments.get(model.name, ""),
        )
        self.store.save_state(state)
        self.reporter.deployment(state.step, "downloading")

    def resume(self, state: AgentState) -> None:
        """Apply the resume rule to a saved step (after a restart)."""
        step = state.step
        if step is None:
            return
        step.state = RESUME.get(step.state, "fetching")
        step.attempts += 1
        if step.attempts > MAX_ATTEMPTS and step.state not in ("committed", "failed", "idle"):
            step.state, step.reason = "failed", "internal"
            step.message = f"gave up after {MAX_ATTEMPTS} interrupted attempts"
        self.store.save_state(state)

    def run(self, state: AgentState, fetcher: Fetcher) -> None:
        """Run the saved step to ``idle``; saves before every state."""
        while state.step is not None:
            step = state.step
            if self._crash_hook is not None:
                self._crash_hook(step.state)
            try:
                event = self._act(state, step, fetcher)
            except (EdgeAgentError, OSError) as e:
                if (step.state, "fail") not in TRANSITIONS:
                    # committed, failed and rolling_back have no way out but through: the
                    # saved state stays and the next cycle (or restart) runs it again.
                    log.error("update %s:%s %s: %s", step.name, step.version, step.state, e)
                    raise
                step.reason, step.message = _reason(e)
                event = "fail"
            nxt = TRANSITIONS[(step.state, event)]
            log.info("update %s:%s %s --%s--> %s", step.name, step.version, step.state, event, nxt)
            if nxt == "idle":
                state.concluded[step.name] = step.deployment
                state.step = None
            else:
                step.state = nxt
            self.store.save_state(state)

    def _seam(self, s: str) -> None:
        if self._fail_in == s and (s, "fail") in TRANSITIONS:
            raise UpdateError("internal", f"test seam: {FAIL_SEAM_ENV}={s}")

    def _check_free(self, need: int, what: str) -> None:
        free = self.store.free_bytes()
        if free - need < self.min_free_bytes:
            raise UpdateError(
                "disk_full",
                f"{what}: {free} bytes free, needs {need} + {self.min_free_bytes} kept free",
            )

    def _act(self, state: AgentState, step: UpdateStep, fetcher: Fetcher) -> str:
        s = step.state
        if s == "fetching":
            self._package = fetcher.package(step.package)
            # Refuse before downloading when the disk is already below its reserve.
            self._check_free(0, "before the download")
            self._fetched = fetcher.model_file(self._package)
        elif s == "verifying":
            assert self._package is not None
            if (self._package.name, self._package.version) != (step.name, step.version):
                # Guards against a package signed for another model being swapped in.
                raise UpdateError("untrusted_metadata", "package does not match the assignment")
        elif s == "staging":
            if self._package is None or self._fetched is None:
                self._package = fetcher.package(step.package)
                self._fetched = fetcher.model_file(self._package)
            self._check_free(self._fetched.stat().st_size, "staging the model")
            self.store.install(self._package, self._package.to_bytes(), self._fetched)
            # The store holds the verified copy now; the download would only fill the disk.
            self._fetched.unlink(missing_ok=True)
        elif s == "warming":
            installed = self.store.installed(step.name, step.version)
            if installed is None:
                raise UpdateError("internal", "staged model is missing")
            self._warm = self.activator.warm(*installed)
        elif s == "switching":
            if self._warm is None:
                installed = self.store.installed(step.name, step.version)
                if installed is None:
                    raise UpdateError("internal", "staged model is missing")
                self._warm = self.activator.warm(*installed)
            warm, self._warm = self._warm, None
            self.activator.switch(warm)
            state.active[step.name] = step.version
            state.deployments[step.name] = step.deployment
            try:
                self._seam(s)
            except UpdateError:
                # The saved rolling_back state must name the previous version as active.
                self._set_active(state, step)
                raise
            return "ok"
        elif s == "committed":
            self.reporter.deployment(step, "active")
            self.store.prune(step.name, keep={v for v in (step.version, step.previous) if v})
        elif s == "failed":
            self.reporter.deployment(step, "failed")
            self._discard(state, step)
        elif s == "rolling_back":
            self._set_active(state, step)
            self.activator.restore(step.name, step.previous)
            self.reporter.deployment(step, "rolled_back")
            self._discard(state, step)
        self._seam(s)
        return "ok"

    def _discard(self, state: AgentState, step: UpdateStep) -> None:
        """A version that did not make it takes no disk space (never the active one)."""
        if state.active.get(step.name) != step.version:
            self.store.remove(step.name, step.version)

    @staticmethod
    def _set_active(state: AgentState, step: UpdateStep) -> None:
        """Name the previous version (and its deployment) as active again."""
        if step.previous is None:
            state.active.pop(step.name, None)
            state.deployments.pop(step.name, None)
        else:
            state.active[step.name] = step.previous
            if step.previous_deployment:
                state.deployments[step.name] = step.previous_deployment


def _reason(e: Exception) -> tuple[str, str]:
    """The reason code and message an error is reported with."""
    if isinstance(e, UpdateError):
        return e.reason, e.message
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return "disk_full", str(e)
    return "internal", str(e)
