"""In-process inference for applications that embed the agent (no HTTP, no JSON)::

    local = LocalInference(agent.registry)
    result = local.infer("churn", {"X": np.array([[...]], dtype=np.float32)})
    result.outputs["label"], result.model_version

It asks the registry for the model on every call, so a swap to a new version is picked up
by the next call; a call that already started finishes on the version it began with.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from edge_agent.runtime import ModelRegistry


class InferResult(NamedTuple):
    outputs: dict[str, np.ndarray]
    model_version: int


class LocalInference:
    def __init__(self, registry: ModelRegistry) -> None:
        self._registry = registry

    def infer(self, name: str, inputs: Mapping[str, Any]) -> InferResult:
        """Raises ``UnknownModelError``, ``BadRequestError`` or ``InferenceError``."""
        model = self._registry.get(name)
        return InferResult(model.infer(inputs), model.version)

    def ready(self, name: str | None = None) -> bool:
        return self._registry.ready() if name is None else self._registry.find(name) is not None
