"""The update state machine: states emit events, transitions live in one table.

Every state is saved (``state.json``) before it runs, and each saved state has a resume rule
(``RESUME``), so a crash or power loss at any point ends with exactly one complete,
verified version active and the deployment reported as committed, failed or rolled back::

    idle -> fetching -> verifying -> staging -> warming -> switching -> committed -> idle
                 \\           \\          \\         \\           \\
                  +-----------+----------+---------+--> failed   +--> rolling_back -> idle

Until ``switching`` the old model serves and nothing needs undoing: a failure ends in
``failed``. ``switching`` writes the new active version and the next state in one atomic
replace of ``state.json``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from edge_agent import protocol
from edge_agent.exceptions import EdgeAgentError, UpdateError
from edge_agent.store import AgentState, ModelStore, UpdateStep

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3  # stops a crash loop in one state

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
    ) -> None:
        self.store = store
        self.reporter = reporter
        self.activator = activator
        self._crash_hook = crash_hook  # tests: kill the process in a given state
        self._package: protocol.ModelPackage | None = None
        self._fetched: Path | None = None
        self._warm: object | None = None

    def begin(self, state: AgentState, model: protocol.AssignedModel) -> None:
        state.step = UpdateStep(
            deployment=model.deployment,
            name=model.name,
            version=model.version,
            package=model.package,
            state="fetching",
            previous=state.active.get(model.name),
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
            except UpdateError as e:
                step.reason, step.message, event = e.reason, e.message, "fail"
            except EdgeAgentError as e:
                step.reason, step.message, event = "internal", str(e), "fail"
            except OSError as e:
                step.reason = "disk_full" if e.errno == 28 else "internal"
                step.message, event = str(e), "fail"
            nxt = TRANSITIONS[(step.state, event)]
            log.info("update %s:%s %s --%s--> %s", step.name, step.version, step.state, event, nxt)
            if nxt == "idle":
                state.step = None
            else:
                step.state = nxt
            self.store.save_state(state)

    def _act(self, state: AgentState, step: UpdateStep, fetcher: Fetcher) -> str:
        s = step.state
        if s == "fetching":
            self._package = fetcher.package(step.package)
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
            if self.store.free_bytes() < self._fetched.stat().st_size * 2:
                raise UpdateError("disk_full", "not enough free space to stage the model")
            self.store.install(self._package, self._package.to_bytes(), self._fetched)
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
            state.active[step.name] = step.version
            state.deployments[step.name] = step.deployment
            self.activator.switch(self._warm)
            self._warm = None
        elif s == "committed":
            self.reporter.deployment(step, "active")
            keep = {step.version} if step.previous is None else {step.version, step.previous}
            self.store.prune(step.name, keep=keep)
        elif s == "failed":
            self.reporter.deployment(step, "failed")
        elif s == "rolling_back":
            if step.previous is None:
                state.active.pop(step.name, None)
            else:
                state.active[step.name] = step.previous
            self.activator.restore(step.name, step.previous)
            self.reporter.deployment(step, "rolled_back")
        return "ok"
