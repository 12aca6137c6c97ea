"""One fleet server (embedded broker) and one trained pipeline for the lifecycle tests."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support.fleet import RunningServer, breast_cancer_pipeline, running_server
from tests.support.mosquitto import start_mosquitto


@dataclass(frozen=True)
class Pipeline:
    model: Path
    sample: Path
    rows: np.ndarray
    estimator: Any

    @property
    def row(self) -> list[list[float]]:
        return [self.rows[0].tolist()]


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    model, sample, rows, estimator = breast_cancer_pipeline(tmp_path_factory.mktemp("pipeline"))
    return Pipeline(model, sample, rows, estimator)


@pytest.fixture(scope="session")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """The fleet server on a real Mosquitto: amqtt (the embedded broker) drops clients when
    a dozen agents connect at once, which the crash matrix does."""
    tmp = tmp_path_factory.mktemp("fleet")
    broker = start_mosquitto(tmp / "mosquitto")
    try:
        with running_server(tmp / "server", mqtt_url=broker.url) as server:
            yield server
    finally:
        broker.stop()


@pytest.fixture(scope="module")
def embedded_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A fleet server with its embedded broker (the one-machine default)."""
    with running_server(tmp_path_factory.mktemp("embedded") / "server") as server:
        yield server
