"""The agent's .deb, for real: build, lintian, dpkg -i, enroll, deploy, purge.

Runs only as root on a dpkg system (it installs into /opt, /etc, /var/lib and adds a user)
and never over an edgefleet-agent package that someone installed: it purges what it
installed at the end. The agent runs directly, as systemd's ExecStart would run it, since
the test machine has no systemd as PID 1.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "packaging" / "build-deb.sh"
UNIT = REPO / "packaging" / "systemd" / "edge-agent.service"
PACKAGE = "edgefleet-agent"
PREFIX = Path("/opt/edgefleet-agent")
SERVER_ONLY = ("sklearn", "fastapi", "sqlalchemy", "scipy", "onnx", "uvicorn", "fleet_server")


def _package_status() -> str:
    done = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", PACKAGE], capture_output=True, text=True
    )
    return done.stdout.strip() if done.returncode == 0 else ""


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "installs a .deb system-wide: needs root"
    for tool in ("dpkg-deb", "dpkg", "dpkg-query"):
        if shutil.which(tool) is None:
            return f"{tool} is missing: not a dpkg system"
    if not Path("/usr/bin/python3").exists():
        return "/usr/bin/python3 is missing: the package runs on the system python3"
    if _package_status().endswith(" installed"):
        return f"{PACKAGE} is already installed here; the test will not replace it"
    return None


if (reason := _why_not()) is not None:
    pytest.skip(reason, allow_module_level=True)


_REPORT: list[str] = []


def _report(line: str) -> None:
    """Keep a measurement for the summary printed at the end of the module."""
    _REPORT.append(line)


@pytest.fixture(scope="module", autouse=True)
def _print_measurements(pytestconfig: pytest.Config) -> Iterator[None]:
    yield
    terminal = pytestconfig.pluginmanager.getplugin("terminalreporter")
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    if terminal is None or capture is None or not _REPORT:
        return
    with capture.global_and_fixture_disabled():  # shown even without -s
        terminal.write_line("")
        for line in _REPORT:
            terminal.write_line(f"[packaging] {line}")


def _du_bytes(path: Path) -> int:
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


@dataclass
class Built:
    deb: Path
    build_s: float


@dataclass
class Installed:
    deb: Path
    install_s: float


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    out = tmp_path_factory.mktemp("deb")
    started = time.monotonic()
    # gzip, not the release's xz: the same files, built in ~20 s instead of ~70-150 s.
    compress = os.environ.get("EDGEFLEET_DEB_COMPRESS", "gzip")
    done = subprocess.run(
        ["bash", str(BUILD), "--out", str(out), "--compress", compress],
        env={**os.environ, "BUILD_PY": sys.executable},
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    debs = list(out.glob(f"{PACKAGE}_*.deb"))
    assert len(debs) == 1, debs
    built = Built(debs[0], time.monotonic() - started)
    _report(
        f"built {built.deb.name} ({compress}): {built.deb.stat().st_size / 2**20:.1f} MiB "
        f"in {built.build_s:.0f} s"
    )
    return built


def _purge() -> subprocess.CompletedProcess[str]:
    return subprocess.run(["dpkg", "--purge", PACKAGE], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def installed(built: Built) -> Iterator[Installed]:
    started = time.monotonic()
    done = subprocess.run(
        ["dpkg", "-i", str(built.deb)], capture_output=True, text=True, timeout=300
    )
    install_s = time.monotonic() - started
    try:
        assert done.returncode == 0, done.stdout + done.stderr
        _report(
            f"dpkg -i {install_s:.1f} s; installed {_du_bytes(PREFIX) / 2**20:.1f} MiB in "
            f"{PREFIX} (with the bytecode postinst compiled)"
        )
        yield Installed(built.deb, install_s)
    finally:
        if _package_status():
            _purge()


def test_lintian_reports_no_errors(built: Built) -> None:
    if shutil.which("lintian") is None:
        pytest.skip("lintian is not installed (apt-get install -y lintian)")
    done = subprocess.run(
        ["lintian", "--tag-display-limit", "0", str(built.deb)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [ln for ln in done.stdout.splitlines() if ln[:2] in ("E:", "W:")]
    _report("lintian:\n" + ("\n".join(lines) or "clean"))
    errors = [ln for ln in lines if ln.startswith("E:")]
    assert not errors, "\n".join(errors)


def test_installed_command_and_venv_hold_only_the_agent(installed: Installed) -> None:
    help_text = subprocess.run(
        ["/usr/bin/edge-agent", "--help"], capture_output=True, text=True, timeout=60
    )
    assert help_text.returncode == 0, help_text.stderr
    assert "enroll" in help_text.stdout and "run" in help_text.stdout

    # The server's dependencies never reach the device: by import and by distribution.
    probe = (
        "import importlib.util, sys; "
        f"found = [m for m in {SERVER_ONLY!r} if importlib.util.find_spec(m)]; "
        "print(' '.join(found)); sys.exit(bool(found))"
    )
    done = subprocess.run(
        [str(PREFIX / "bin" / "python"), "-I", "-c", probe], capture_output=True, text=True
    )
    assert done.returncode == 0, f"server modules in the agent venv: {done.stdout}"
    dists = {p.name.split("-")[0].lower() for p in PREFIX.glob("lib/python3*/site-packages/*")}
    assert not dists & {"scikit_learn", "fastapi", "sqlalchemy", "scipy", "uvicorn"}, dists

    # The venv is bound to its final path, and runs the system python3.
    assert os.readlink(PREFIX / "bin" / "python") == "/usr/bin/python3"
    shebang = (PREFIX / "bin" / "edge-agent").read_text().splitlines()[0]
    assert shebang == f"#!{PREFIX}/bin/python"

    # A dedicated system user owns the state directory, closed to others.
    passwd = subprocess.run(["getent", "passwd", "edge-agent"], capture_output=True, text=True)
    assert passwd.returncode == 0
    uid = int(passwd.stdout.split(":")[2])
    assert uid < 1000, "edge-agent must be a system user"
    state = os.stat("/var/lib/edge-agent")
    assert state.st_uid == uid and oct(state.st_mode & 0o777) == "0o750"

    conffiles = subprocess.run(
        ["dpkg-query", "-W", "-f=${Conffiles}", PACKAGE], capture_output=True, text=True
    ).stdout
    assert "/etc/edge-agent/agent.toml" in conffiles


def test_unit_passes_systemd_analyze_verify(installed: Installed) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is missing (apt-get install -y systemd)")
    unit = Path("/lib/systemd/system/edge-agent.service")
    assert unit.read_text() == UNIT.read_text()
    # verify checks the syntax, every directive, and that ExecStart's binary exists.
    done = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
    settings = _unit_settings(unit)
    for key, value in {
        "Type": "notify",
        "User": "edge-agent",
        "StateDirectory": "edge-agent",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "Restart": "on-failure",
        "WatchdogSec": "30",
        "MemoryMax": "256M",
    }.items():
        assert settings.get(key) == value, (key, settings.get(key))


def _unit_settings(unit: Path) -> dict[str, str]:
    settings: dict[str, str] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), value.strip())
    return settings


def _exec_start(data_dir: Path) -> list[str]:
    """The unit's ExecStart, with the test's data dir in place of /var/lib/edge-agent."""
    argv = shlex.split(_unit_settings(UNIT)["ExecStart"])
    return [str(data_dir) if a == "/var/lib/edge-agent" else a for a in argv]


def _infer(port: int, name: str, rows: list[list[float]]) -> dict[str, Any]:
    body = {
        "inputs": [
            {
                "name": "input",
                "shape": [len(rows), len(rows[0])],
                "datatype": "FP32",
                "data": [v for r in rows for v in r],
            }
        ]
    }
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v2/models/{name}/infer",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        answer: dict[str, Any] = json.loads(resp.read())
    return answer


_DEVICE_ID_PROBE = """
import sys
from pathlib import Path
from edge_agent.config import AgentConfig
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
print(AgentConfig.load(Path(args["--data-dir"]), Path(args["--config"])).device_id)
"""


def _wait_serving(agent: subprocess.Popen[bytes], data_dir: Path, log: Path) -> None:
    """Fail at once, with the agent's own words, if it exits instead of serving."""
    deadline = time.monotonic() + 60
    while not (data_dir / "api.port").exists():
        assert agent.poll() is None, f"the installed agent exited: {log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"agent API never came up: {log.read_text()[-3000:]}"
        time.sleep(0.1)


def test_installed_agent_enrolls_and_activates_a_deployed_model(
    installed: Installed, tmp_path: Path
) -> None:
    from tests.support.fleet import breast_cancer_pipeline, running_server

    data_dir = tmp_path / "device"
    log = tmp_path / "agent.log"
    with running_server(tmp_path / "server") as fleet:
        model_path, sample, rows, model = breast_cancer_pipeline(tmp_path)
        fleet.client.publish("cancer", model_path, sample=sample)

        started = time.monotonic()
        token = fleet.client.enrollment_token(group="packaging")
        enroll = subprocess.run(
            ["/usr/bin/edge-agent", "enroll", "--server", fleet.url, "--token", token,
             "--data-dir", str(data_dir), "--name", "deb-device", "--api-port", "0"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert enroll.returncode == 0, enroll.stdout + enroll.stderr
        # The same command line as the unit: --config /etc/edge-agent/agent.toml, the
        # commented conffile, on top of what enrollment wrote into the data dir.
        env = {
            **os.environ,
            "EDGE_AGENT_HEARTBEAT_S": "1",
            "EDGE_AGENT_API_PORT": "0",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        env.pop("NOTIFY_SOCKET", None)
        argv = _exec_start(data_dir)
        # The unit passes --config /etc/edge-agent/agent.toml: the identity that enrollment
        # wrote into DATA_DIR/agent.toml must still be seen under it.
        seen = subprocess.run(
            [str(PREFIX / "bin" / "python"), "-I", "-c", _DEVICE_ID_PROBE, *argv[2:]],
            capture_output=True, text=True, env=env, timeout=60,
        )  # fmt: skip
        assert seen.stdout.strip() == "deb-device", (
            "with the unit's --config /etc/edge-agent/agent.toml the agent does not see the "
            f"enrolled identity in {data_dir}/agent.toml (device_id={seen.stdout.strip()!r}, "
            f"{seen.stderr.strip()[-500:]}): AgentConfig.load must read DATA_DIR/agent.toml "
            "and then --config on top"
        )
        agent = subprocess.Popen(argv, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
        try:
            _wait_serving(agent, data_dir, log)
            dep = fleet.client.deploy("cancer", 1, devices=["deb-device"])
            dep = fleet.client.wait_deployment(dep["id"], timeout=120)
            statuses = {d["device"]: d["status"] for d in dep["devices"]}
            assert statuses == {"deb-device": "active"}, (dep, log.read_text()[-3000:])
            active_s = time.monotonic() - started
            assert agent.poll() is None, log.read_text()[-3000:]
            # The installed agent serves what the publisher's model computes.
            answer = _infer(int((data_dir / "api.port").read_text()), "cancer", rows.tolist())
            outputs = {o["name"]: o for o in answer["outputs"]}
            assert outputs["label"]["data"] == model.predict(rows).tolist()
        finally:
            agent.terminate()
            try:
                agent.wait(15)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait(5)
        assert agent.returncode in (0, -15), log.read_text()[-3000:]  # SIGTERM: clean stop
    _report(
        f"install-to-active: dpkg -i {installed.install_s:.1f} s + enroll, start and "
        f"deploy until active {active_s:.1f} s = {installed.install_s + active_s:.1f} s; "
        f"device footprint {_du_bytes(data_dir) / 2**10:.0f} KiB in its data dir"
    )


def test_purge_removes_venv_config_state_and_user(installed: Installed) -> None:
    done = _purge()
    assert done.returncode == 0, done.stdout + done.stderr
    assert _package_status() == ""
    for path in (
        PREFIX,
        Path("/etc/edge-agent"),
        Path("/var/lib/edge-agent"),
        Path("/usr/bin/edge-agent"),
        Path("/lib/systemd/system/edge-agent.service"),
    ):
        assert not os.path.lexists(path), f"{path} is left after purge"
    for db in ("passwd", "group"):
        assert subprocess.run(["getent", db, "edge-agent"], capture_output=True).returncode
    assert not list(Path("/etc/systemd/system").glob("*/edge-agent.service"))
