"""A whole fleet on one machine: the server in a thread, agents as separate processes.

Used by ``fleet-server demo`` and by the end-to-end tests.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import uvicorn

from fleet_server.app import create_app
from fleet_server.settings import Settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerThread:
    """uvicorn serving ``create_app(settings)`` in a daemon thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = create_app(settings)
        config = uvicorn.Config(
            self.app,
            host=settings.host,
            port=settings.port,
            log_level="warning",
            lifespan="on",
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.settings.port}"

    def start(self, timeout: float = 60.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._server.started:
                return
            if not self._thread.is_alive():
                raise RuntimeError("fleet server failed to start (see the log above)")
            time.sleep(0.05)
        raise RuntimeError("fleet server did not start in time")

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=15)


class AgentProcess:
    """One ``edge-agent`` in its own process and data dir."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None
        self.log = data_dir.parent / f"{data_dir.name}.log"

    def _cmd(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "edge_agent.cli", *args]

    def enroll(self, server: str, token: str, name: str) -> None:
        subprocess.run(
            self._cmd(
                "enroll",
                "--server",
                server,
                "--token",
                token,
                "--data-dir",
                str(self.data_dir),
                "--name",
                name,
                "--api-port",
                "0",
            ),
            check=True,
            env=self.env,
            capture_output=True,
            timeout=60,
        )

    def start(self) -> None:
        (self.data_dir / "api.port").unlink(missing_ok=True)
        self.process = subprocess.Popen(
            self._cmd("run", "--data-dir", str(self.data_dir)),
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            env=self.env,
        )

    @property
    def api_port(self) -> int:
        path = self.data_dir / "api.port"
        deadline = time.monotonic() + 30
        while not path.exists():
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"agent exited: {self.log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("agent API did not come up")
            time.sleep(0.05)
        return int(path.read_text())

    def infer(self, model: str, rows: list[list[float]]) -> dict[str, Any]:
        body = json.dumps(
            {
                "inputs": [
                    {
                        "name": "input",
                        "shape": [len(rows), len(rows[0])],
                        "datatype": "FP32",
                        "data": [v for r in rows for v in r],
                    }
                ]
            }
        ).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.api_port}/v2/models/{model}/infer",
            data=body,
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            result: dict[str, Any] = json.loads(resp.read())
            return result

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(5)
