"""A running fleet server for tests: initialized data dir, server thread, admin client."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fleet_server.cli import initialize
from fleet_server.client import FleetClient
from fleet_server.demo import train_demo_model
from fleet_server.local_fleet import ServerThread, free_port
from fleet_server.settings import Settings


@dataclass
class RunningServer:
    server: ServerThread
    token: str
    client: FleetClient
    data_dir: Path

    @property
    def url(self) -> str:
        return self.server.url


@contextmanager
def running_server(
    data_dir: Path, *, mqtt_url: str = "", db_url: str = ""
) -> Iterator[RunningServer]:
    token = initialize(data_dir, db_url, print_token=False)
    settings = Settings.load(
        data_dir,
        port=free_port(),
        embedded_mqtt_port=free_port(),
        mqtt_url=mqtt_url,
        db_url=db_url,
    )
    server = ServerThread(settings)
    server.start()
    client = FleetClient(server.url, token)
    try:
        yield RunningServer(server, token, client, data_dir)
    finally:
        client.close()
        server.stop()


def breast_cancer_pipeline(tmp: Path) -> tuple[Path, Path, np.ndarray, Any]:
    """The demo's fitted StandardScaler + LogisticRegression (skops), its 300-row sample CSV,
    and 20 held-out rows."""
    model, sample, held_out, estimator = train_demo_model(tmp)
    return model, sample, held_out[:20], estimator
