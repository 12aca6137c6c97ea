"""Installed model versions on disk and the agent's saved state.

Layout under the data dir::

    models/<name>/<version>/model.onnx    verified model bytes
    models/<name>/<version>/package.json  its signed package description
    state.json                            active versions, applied assignment, update step

``state.json`` is the single source of truth for what is active: it is replaced atomically,
so after a crash exactly one complete version of each model is active.
"""

from __future__ import annotations

import json
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent import protocol
from edge_agent.exceptions import ProtocolError
from edge_agent.fsutil import atomic_copy, atomic_write


@dataclass
class UpdateStep:
    """An update in progress, saved before each step (see ``edge_agent.lifecycle``)."""

    deployment: str
    name: str
    version: int
    package: str
    state: str
    previous: int | None = None
    previous_deployment: str = ""
    attempts: int = 0
    reason: str = ""
    message: str = ""


@dataclass
class AgentState:
    active: dict[str, int] = field(default_factory=dict)
    deployments: dict[str, str] = field(default_factory=dict)  # model name -> deployment id
    applied_serial: int = 0
    step: UpdateStep | None = None
    # model name -> the last deployment that ended (committed, failed or rolled back)
    concluded: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "active": self.active,
                "deployments": self.deployments,
                "applied_serial": self.applied_serial,
                "step": self.step.__dict__ if self.step else None,
                "concluded": self.concluded,
            },
            indent=1,
            sort_keys=True,
        ).encode()

    @classmethod
    def from_json(cls, data: bytes) -> AgentState:
        raw: dict[str, Any] = json.loads(data)
        step = raw.get("step")
        return cls(
            active={str(k): int(v) for k, v in raw.get("active", {}).items()},
            deployments={str(k): str(v) for k, v in raw.get("deployments", {}).items()},
            applied_serial=int(raw.get("applied_serial", 0)),
            step=UpdateStep(**step) if step else None,
            concluded={str(k): str(v) for k, v in raw.get("concluded", {}).items()},
        )


class ModelStore:
    def __init__(self, data_dir: Path, keep_versions: int = 3) -> None:
        self.root = data_dir / "models"
        self.state_path = data_dir / "state.json"
        self.keep_versions = max(1, keep_versions)
        self._lock = threading.Lock()
        self.root.mkdir(parents=True, exist_ok=True)

    def version_dir(self, name: str, version: int) -> Path:
        return self.root / protocol.validate_model_name(name) / str(int(version))

    def load_state(self) -> AgentState:
        if not self.state_path.exists():
            return AgentState()
        return AgentState.from_json(self.state_path.read_bytes())

    def save_state(self, state: AgentState) -> None:
        with self._lock:
            atomic_write(self.state_path, state.to_json())

    def install(
        self, package: protocol.ModelPackage, package_bytes: bytes, model_file: Path
    ) -> Path:
        """Copy a verified model and its package into place; return the model path."""
        d = self.version_dir(package.name, package.version)
        if d.exists():  # temp files of a copy that a crash interrupted
            for stale in d.glob(".*"):
                stale.unlink(missing_ok=True)
        atomic_copy(model_file, d / "model.onnx")
        atomic_write(d / "package.json", package_bytes)
        return d / "model.onnx"

    def installed(self, name: str, version: int) -> tuple[protocol.ModelPackage, Path] | None:
        d = self.version_dir(name, version)
        try:
            package = protocol.ModelPackage.from_bytes((d / "package.json").read_bytes())
        except (OSError, ProtocolError):
            return None
        model = d / "model.onnx"
        return (package, model) if model.exists() else None

    def prune(self, name: str, keep: set[int]) -> list[int]:
        """Remove versions beyond the newest ``keep_versions``, never one in ``keep``."""
        d = self.root / protocol.validate_model_name(name)
        if not d.exists():
            return []
        versions = sorted((int(p.name) for p in d.iterdir() if p.name.isdigit()), reverse=True)
        removed = []
        for v in versions[self.keep_versions :]:
            if v not in keep:
                shutil.rmtree(d / str(v), ignore_errors=True)
                removed.append(v)
        return removed

    def remove(self, name: str, version: int) -> None:
        """Remove one installed version (a failed or rolled-back update's files)."""
        shutil.rmtree(self.version_dir(name, version), ignore_errors=True)

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free
