"""``fleet-server demo``: a whole fleet on this machine, from a trained model to inference."""

from __future__ import annotations

import io
import shutil
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from fleet_server.client import FleetClient
from fleet_server.local_fleet import AgentProcess, ServerThread, free_port
from fleet_server.settings import Settings

console = Console()


def train_demo_model(workdir: Path) -> tuple[Path, Path, Any, Any]:
    """A scaler + logistic regression on scikit-learn's bundled breast-cancer data, saved with
    skops, a 300-row sample CSV of its training rows, and the held-out rows (float32)."""
    import numpy as np
    import skops.io as sio
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = load_breast_cancer(return_X_y=True)
    x = x.astype(np.float32)
    x_train, x_test, y_train, _ = train_test_split(x, y, test_size=0.3, random_state=0)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x_train, y_train)
    model_path = workdir / "breast_cancer.skops"
    sio.dump(model, model_path)
    buf = io.StringIO()
    np.savetxt(
        buf,
        x_train[:300],
        delimiter=",",
        fmt="%.6g",
        header=",".join(f"f{i}" for i in range(x.shape[1])),
        comments="",
    )
    sample_path = workdir / "sample.csv"
    sample_path.write_text(buf.getvalue())
    return model_path, sample_path, x_test, model


def run_demo(data_dir: Path, *, agents: int = 3, keep_running: bool = False) -> int:
    from fleet_server.cli import initialize

    started = time.monotonic()
    if data_dir.exists():
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True)
    console.rule("[bold]edgefleet demo")
    token = initialize(data_dir / "server", print_token=False)
    settings = Settings.load(data_dir / "server", port=free_port(), embedded_mqtt_port=free_port())
    server = ServerThread(settings)
    server.start()
    console.print(
        f"fleet server on {server.url} with the embedded MQTT broker "
        f"(mqtt://127.0.0.1:{settings.embedded_mqtt_port}) and SQLite"
    )
    fleet: list[AgentProcess] = []
    try:
        with FleetClient(server.url, token) as client:
            for i in range(agents):
                agent = AgentProcess(
                    data_dir / f"agent-{i + 1}", env={"EDGE_AGENT_HEARTBEAT_S": "2"}
                )
                agent.enroll(server.url, client.enrollment_token(group="demo"), f"demo-{i + 1}")
                agent.start()
                fleet.append(agent)
            console.print(f"enrolled and started {agents} agents (separate processes)")

            model_path, sample_path, held_out, model = train_demo_model(data_dir)
            rows = held_out[:5].tolist()
            version = client.publish("breast-cancer", model_path, sample=sample_path)
            parity = version["parity"]["outputs"]
            console.print(
                f"published breast-cancer:{version['version']} (sha256 {version['sha256'][:12]}…): "
                f"parity on {version['parity']['rows']} sample rows: label agreement "
                f"{parity['label']['agreement']:.0%}, probabilities max abs diff "
                f"{parity['probabilities']['max_abs']:.1e}"
            )
            dep = client.deploy("breast-cancer", version["version"], group="demo")
            dep = client.wait_deployment(dep["id"], timeout=120)
            console.print(f"deployment {dep['id']}: {dep['counts']}")

            answer = fleet[0].infer("breast-cancer", rows)
            expected = model.predict(rows)
            table = Table(
                title=f"inference on demo-1 (model version {answer.get('model_version')})"
            )
            table.add_column("row")
            table.add_column("device label")
            table.add_column("scikit-learn label")
            labels = next(o for o in answer["outputs"] if o["name"] == "label")["data"]
            for i, (got, want) in enumerate(zip(labels, expected, strict=False)):
                table.add_row(str(i), str(got), str(want))
            console.print(table)

            time.sleep(3)  # one more heartbeat
            devices = Table(title="devices as the server sees them (heartbeats over MQTT)")
            for col in ("id", "state", "models", "last seen"):
                devices.add_column(col)
            for d in client.devices():
                devices.add_row(d["id"], d["state"], str(d["models"]), str(d["last_seen"]))
            console.print(devices)
            console.print(f"telemetry records from demo-1: {len(client.telemetry('demo-1'))}")
        console.print(f"\nAPI docs:   {server.url}/docs")
        console.print(f"admin token: {token}")
        console.print(f"agent API:  http://127.0.0.1:{fleet[0].api_port}/v2/models/breast-cancer")
        console.print(f"[green]demo finished in {time.monotonic() - started:.1f} s[/]")
        if keep_running:
            console.print("serving until Ctrl+C")
            while True:
                time.sleep(1)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        for agent in fleet:
            agent.stop()
        server.stop()
