"""The real ``fleetctl`` console script, as a subprocess, against a running server:
publish, list, show, stage, deprecate, deploy, devices, deployments; exit codes."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fleet_server.local_fleet import AgentProcess
from tests.support.fleet import RunningServer, breast_cancer_pipeline, running_server

FLEETCTL = Path(sys.executable).parent / "fleetctl"


@dataclass
class Cli:
    fleet: RunningServer
    home: Path
    model: Path
    sample: Path

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("FLEET_SERVER", "FLEET_TOKEN")}
        env.update(
            FLEET_SERVER=self.fleet.url,
            FLEET_TOKEN=self.fleet.token,
            XDG_CONFIG_HOME=str(self.home / "config"),
            HOME=str(self.home),
            COLUMNS="200",
        )
        env.update(extra)
        return {k: v for k, v in env.items() if v != ""}

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(FLEETCTL), *args],
            env=self.env(**env),
            capture_output=True,
            text=True,
            timeout=120,
        )

    def json(self, *args: str) -> Any:
        r = self.run(*args, "--json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    tmp = tmp_path_factory.mktemp("fleetctl")
    with running_server(tmp / "server") as fleet:
        model, sample, _, _ = breast_cancer_pipeline(tmp)
        # A real enrolled device (enrollment makes its key and certificate).
        AgentProcess(tmp / "agent").enroll(fleet.url, fleet.client.enrollment_token(), "dev-1")
        yield Cli(fleet, tmp / "home", model, sample)


def test_publish_list_show_stage_and_deploy_to_an_enrolled_device(cli: Cli) -> None:
    published = cli.json(
        "models", "publish", str(cli.model), "--name", "cancer", "--sample", str(cli.sample)
    )
    assert published["version"] == 1 and published["parity"]["passed"] is True
    assert published["latency"]["single_row_p50_us"] > 0

    listing = cli.json("models", "list")
    assert [(m["name"], m["latest_version"]) for m in listing] == [("cancer", 1)]

    shown = cli.json("models", "show", "cancer", "1")
    assert shown["sha256"] == published["sha256"]
    human = cli.run("models", "show", "cancer", "1")
    assert human.returncode == 0
    assert "passed on 300 sample rows" in human.stdout and "single row p50" in human.stdout

    assert cli.json("models", "stage", "cancer", "1", "production")["stage"] == "production"
    prod = cli.json("models", "list", "--stage", "production")
    assert prod[0]["production_version"] == 1 and prod[0]["matching_versions"] == [1]
    assert cli.json("models", "tag", "cancer", "1", "--add", "baseline")["tags"] == ["baseline"]
    assert cli.json("models", "list", "--tag", "nothing") == []

    devices = cli.json("devices", "list")
    assert [d["id"] for d in devices] == ["dev-1"]
    dep = cli.json("deploy", "cancer:1", "--device", "dev-1")
    assert dep["model"] == "cancer" and dep["version"] == 1
    shown_dep = cli.json("deployments", "show", dep["id"])
    assert [d["device"] for d in shown_dep["devices"]] == ["dev-1"]
    table = cli.run("deployments", "show", dep["id"])
    assert table.returncode == 0 and "dev-1" in table.stdout

    deprecated = cli.json("models", "deprecate", "cancer", "1", "--reason", "superseded")
    assert deprecated["deprecated"] is True and deprecated["stage"] == "archived"
    refused = cli.run("deploy", "cancer:1", "--device", "dev-1")
    assert refused.returncode == 7 and "deprecated" in refused.stderr


def test_global_json_flag_and_human_tables(cli: Cli) -> None:
    r = cli.run("--json", "devices", "list")
    assert r.returncode == 0 and json.loads(r.stdout)[0]["id"] == "dev-1"
    human = cli.run("devices", "list")
    assert human.returncode == 0 and "dev-1" in human.stdout
    assert not human.stdout.lstrip().startswith("[")


def test_publish_with_optimized_variant_and_versions_listing(cli: Cli) -> None:
    base = cli.json("models", "publish", str(cli.model), "--name", "fast", "--optimized")
    assert base["variants"] == [2]
    versions = cli.json("models", "versions", "fast")
    assert [(v["version"], v["base_version"]) for v in versions] == [(1, None), (2, 1)]
    more = cli.json("models", "optimize", "fast", "1", "--no-quantize")
    assert (more["version"], more["variant"], more["base_version"]) == (3, "optimized", 1)


def test_exit_codes_scripts_can_rely_on(cli: Cli, tmp_path: Path) -> None:
    # 401: unknown token -> 5
    r = cli.run("models", "list", FLEET_TOKEN="eft_not-a-real-token")
    assert r.returncode == 5 and "401" in r.stderr
    # 404: no such version -> 6
    r = cli.run("models", "show", "no-such-model", "1")
    assert r.returncode == 6 and "404" in r.stderr
    # 422: not a model -> 7, and the server's reason reaches the user
    junk = tmp_path / "notes.txt"
    junk.write_text("a shopping list\n")
    r = cli.run("models", "publish", str(junk), "--name", "junk")
    assert r.returncode == 7 and "422" in r.stderr
    # 422: parity fails beyond the tolerance -> 7, with the parity failure shown
    r = cli.run(
        "models",
        "publish",
        str(cli.model),
        "--name",
        "tight",
        "--sample",
        str(cli.sample),
        "--tolerance",
        "0",
    )
    assert r.returncode in (0, 7)
    if r.returncode == 7:
        assert "parity" in r.stderr
    # bad usage -> 2: no target, both targets, bad reference, unknown option, missing file
    assert cli.run("deploy", "cancer:1").returncode == 2
    assert cli.run("deploy", "cancer:1", "--device", "d", "--group", "g").returncode == 2
    assert cli.run("deploy", "cancer", "--device", "dev-1").returncode == 2
    assert cli.run("models", "list", "--colour").returncode == 2
    assert (
        cli.run("models", "publish", str(tmp_path / "missing.onnx"), "--name", "x").returncode == 2
    )
    # no server configured -> 2
    r = cli.run("models", "list", FLEET_SERVER="", FLEET_TOKEN="")
    assert r.returncode == 2 and "fleetctl login" in r.stderr
    # unreachable server -> 3
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    r = cli.run("models", "list", FLEET_SERVER=closed)
    assert r.returncode == 3
    # a viewer may read but not publish -> 5
    viewer = _viewer_token(cli)
    assert cli.run("models", "list", FLEET_TOKEN=viewer).returncode == 0
    r = cli.run("models", "stage", "fast", "1", "staging", FLEET_TOKEN=viewer)
    assert r.returncode == 5 and "403" in r.stderr
    for result in (r,):
        assert "Traceback" not in result.stderr


def _viewer_token(cli: Cli) -> str:
    from fleet_server.auth import create_token
    from fleet_server.db import Database

    db = Database(cli.fleet.server.settings.database_url)
    with db.begin() as s:
        token = create_token(s, "viewer", "viewer")[1]
    db.engine.dispose()
    return token


def test_login_saves_a_private_config_that_later_calls_use(cli: Cli, tmp_path: Path) -> None:
    home = {"XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    r = cli.run("login", "--server", cli.fleet.url, "--token", cli.fleet.token, **home)
    assert r.returncode == 0, r.stderr
    saved = tmp_path / "cfg" / "edgefleet" / "fleetctl.json"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    r = cli.run("--json", "models", "list", FLEET_SERVER="", FLEET_TOKEN="", **home)
    assert r.returncode == 0 and json.loads(r.stdout)
    # A wrong token is checked before anything is saved.
    other = {"XDG_CONFIG_HOME": str(tmp_path / "cfg2")}
    r = cli.run("login", "--server", cli.fleet.url, "--token", "eft_wrong", **other)
    assert r.returncode == 5
    assert not (tmp_path / "cfg2" / "edgefleet" / "fleetctl.json").exists()


def _agent_modules_present() -> bool:
    import importlib

    try:
        for module in ("outbox", "health", "summaries"):
            importlib.import_module(f"edge_agent.{module}")
    except ImportError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(
    not _agent_modules_present(), reason="edge_agent outbox/health/summaries not written yet"
)
def test_deploy_wait_reaches_a_running_agent(cli: Cli, tmp_path: Path) -> None:
    agent = AgentProcess(tmp_path / "agent", env={"EDGE_AGENT_HEARTBEAT_S": "1"})
    agent.enroll(cli.fleet.url, cli.fleet.client.enrollment_token(group="lab"), "dev-live")
    agent.start()
    try:
        cli.json("models", "publish", str(cli.model), "--name", "live", "--sample", str(cli.sample))
        dep = cli.json("deploy", "live:1", "--group", "lab", "--wait", "--timeout", "90")
        assert dep["counts"] == {"active": 1}, dep
    finally:
        agent.stop()
