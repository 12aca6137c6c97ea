"""Start a real Mosquitto process on a free loopback port with the project's own config."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEV_CONF = REPO / "packaging" / "mosquitto" / "dev.conf"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Mosquitto:
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


def start_mosquitto(
    workdir: Path, conf: Path = DEV_CONF, extra: str = "", port: int | None = None
) -> Mosquitto:
    """Run mosquitto with ``conf`` plus a listener on ``port`` (default: a free one); wait
    until it accepts. The same ``port`` again restarts a broker at the same address."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(binary).exists():
        raise RuntimeError("mosquitto is not installed (apt-get install -y mosquitto)")
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = workdir / "mosquitto.conf"
    cfg.write_text(f"{conf.read_text()}\n{extra}\nlistener {port} 127.0.0.1\n")
    log = workdir / "mosquitto.log"
    proc = subprocess.Popen(
        [binary, "-c", str(cfg)], stdout=log.open("ab"), stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited: {log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return Mosquitto(port, proc, log)
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("mosquitto did not start listening")
