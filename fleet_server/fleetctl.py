"""``fleetctl``: the fleet from a terminal. Tables for people, ``--json`` for scripts.

Exit codes: 0 success, 1 the server refused (4xx), 2 usage or local error, 3 server or
network failure (5xx, unreachable), 4 a deployment ended with failed devices.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from fleet_server.client import FleetAPIError, FleetClient

app = typer.Typer(help="edgefleet command line", no_args_is_help=True, add_completion=False)
models_app = typer.Typer(help="publish and browse models", no_args_is_help=True)
devices_app = typer.Typer(help="enrolled devices", no_args_is_help=True)
deployments_app = typer.Typer(help="deployments", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(devices_app, name="devices")
app.add_typer(deployments_app, name="deployments")
console = Console()
err = Console(stderr=True)


def config_path() -> Path:
    base = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config"))
    return base / "edgefleet" / "fleetctl.json"


class _State:
    server: str = ""
    token: str = ""
    as_json: bool = False


state = _State()


@app.callback()
def _main(
    server: Annotated[Optional[str], typer.Option(envvar="FLEET_SERVER", help="server URL")] = None,  # noqa: UP045
    token: Annotated[Optional[str], typer.Option(envvar="FLEET_TOKEN", help="API token")] = None,  # noqa: UP045
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    saved: dict[str, str] = {}
    if config_path().exists():
        saved = json.loads(config_path().read_text())
    state.server = server or saved.get("server", "")
    state.token = token or saved.get("token", "")
    state.as_json = as_json


def _client() -> FleetClient:
    if not state.server or not state.token:
        err.print(
            "[red]no server or token:[/] use --server/--token, FLEET_SERVER/FLEET_TOKEN "
            "or `fleetctl login`"
        )
        raise typer.Exit(2)
    return FleetClient(state.server, state.token)


def _run(fn: Any, *args: Any, **kw: Any) -> Any:
    try:
        return fn(*args, **kw)
    except FleetAPIError as e:
        err.print(f"[red]error {e.status}:[/] {e.detail}")
        raise typer.Exit(1 if e.status < 500 else 3) from e
    except (OSError, TimeoutError) as e:
        err.print(f"[red]cannot reach the server:[/] {e}")
        raise typer.Exit(3) from e


def _emit(data: Any, columns: list[str], title: str) -> None:
    if state.as_json:
        print(json.dumps(data, indent=2, default=str))
        return
    rows = data if isinstance(data, list) else [data]
    table = Table(title=title)
    for c in columns:
        table.add_column(c)
    for r in rows:
        table.add_row(*[str(r.get(c, "")) for c in columns])
    console.print(table)


@app.command()
def login(
    server: Annotated[str, typer.Option(prompt=True)],
    token: Annotated[str, typer.Option(prompt=True, hide_input=True)],
) -> None:
    """Store the server URL and token in the user's config dir (mode 0600)."""
    with FleetClient(server, token) as c:
        _run(c.models)
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"server": server, "token": token}))
    path.chmod(0o600)
    console.print(f"logged in; saved to {path}")


@models_app.command("publish")
def models_publish(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False)],
    name: Annotated[str, typer.Option("--name")],
    sample: Annotated[Optional[Path], typer.Option(exists=True, dir_okay=False)] = None,  # noqa: UP045
    tolerance: float = 1e-4,
    force: bool = False,
) -> None:
    """Convert (on the server), check, sign and register FILE (ONNX or skops)."""
    with _client() as c, console.status(f"publishing {file.name}: converting and checking parity"):
        result = _run(c.publish, name, file, sample=sample, tolerance=tolerance, force=force)
    _emit(result, ["name", "version", "sha256", "size", "opset"], "published")


@models_app.command("convert")
def models_convert(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False)],
    out: Annotated[Path, typer.Option("--out", help="where to write the ONNX file")],
    sample: Annotated[Optional[Path], typer.Option(exists=True, dir_okay=False)] = None,  # noqa: UP045
) -> None:
    """Convert a pickle/joblib model locally (your own file, on your own machine) to ONNX."""
    from converters.loading import convert_pickle_locally

    import converters

    estimator = convert_pickle_locally(file)
    sample_bytes = sample.read_bytes() if sample else None
    result = converters.convert_estimator(estimator, sample_bytes)
    out.write_bytes(result.onnx_bytes)
    console.print(
        f"wrote {out} ({len(result.onnx_bytes)} bytes); publish it with "
        f"`fleetctl models publish {out} --name NAME`"
    )


@models_app.command("list")
def models_list() -> None:
    with _client() as c:
        _emit(_run(c.models), ["name", "latest_version", "versions", "updated_at"], "models")


@models_app.command("show")
def models_show(name: str, version: int) -> None:
    with _client() as c:
        _emit(
            _run(c.model_version, name, version),
            ["name", "version", "sha256", "size", "opset", "ort_min", "parity"],
            "model version",
        )


@app.command()
def deploy(
    ref: Annotated[str, typer.Argument(help="NAME:VERSION")],
    device: Annotated[Optional[list[str]], typer.Option("--device")] = None,  # noqa: UP045
    group: Annotated[Optional[str], typer.Option("--group")] = None,  # noqa: UP045
    wait: Annotated[bool, typer.Option(help="wait until every device finished")] = False,
) -> None:
    """Deploy NAME:VERSION to devices or a group."""
    name, _, ver = ref.partition(":")
    if not ver.isdigit() or not (device or group):
        err.print("[red]usage:[/] fleetctl deploy NAME:VERSION (--device ID ... | --group G)")
        raise typer.Exit(2)
    with _client() as c:
        dep = _run(c.deploy, name, int(ver), devices=device, group=group)
        if wait:
            dep = _run(c.wait_deployment, dep["id"])
    _emit(dep, ["id", "model", "version", "counts"], "deployment")
    if wait and dep["counts"].get("failed"):
        raise typer.Exit(4)


@devices_app.command("list")
def devices_list() -> None:
    with _client() as c:
        _emit(_run(c.devices), ["id", "group", "state", "models", "last_seen"], "devices")


@deployments_app.command("show")
def deployments_show(deployment_id: str) -> None:
    with _client() as c:
        dep = _run(c.deployment, deployment_id)
    if state.as_json:
        _emit(dep, [], "")
        return
    _emit(
        dep["devices"],
        ["device", "status", "reason", "message", "updated_at"],
        f"deployment {dep['id']} of {dep['model']}:{dep['version']}",
    )


def main() -> None:
    app()
