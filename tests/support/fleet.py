"""A running fleet server for tests: initialized data dir, server thread, admin client."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fleet_server.cli import initialize
from fleet_server.client import FleetClient
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
    """A fitted StandardScaler + LogisticRegression, saved with skops, and a sample CSV."""
    import skops.io as sio
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = load_breast_cancer(return_X_y=True)
    x = x.astype(np.float32)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x[:400], y[:400])
    path = tmp / "model.skops"
    sio.dump(model, path)
    buf = io.StringIO()
    np.savetxt(
        buf,
        x[:300],
        delimiter=",",
        fmt="%.8g",
        header=",".join(f"f{i}" for i in range(x.shape[1])),
        comments="",
    )
    sample = tmp / "sample.csv"
    sample.write_text(buf.getvalue())
    return path, sample, x[400:420], model
