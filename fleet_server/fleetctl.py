"""``fleetctl``: the fleet from a terminal. Tables for people, ``--json`` for scripts
(JSON goes to stdout; progress, spinners and errors go to stderr).

Server and token: ``--server``/``--token``, else ``FLEET_SERVER``/``FLEET_TOKEN``, else
what ``fleetctl login`` saved in ``$XDG_CONFIG_HOME/edgefleet/fleetctl.json``.

Exit codes (scripts may rely on them)::

    0  success
    1  the server refused the request (4xx not listed below: 400, 409, 413, 429)
    2  bad usage (unknown option, missing argument, no server or token configured)
    3  server failure (5xx) or the server cannot be reached
    4  deploy --wait: the deployment ended with failed or rolled-back devices
    5  authentication or permission refused (401, 403)
    6  not found (404: model, version, device, deployment)
    7  rejected (422: invalid request, the model failed a check or parity)
    8  deploy --wait: timed out while devices were still updating
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import IntEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn, Optional, TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from fleet_server.client import FleetAPIError, FleetClient, FleetConnectionError


class ExitCode(IntEnum):
    OK = 0
    REFUSED = 1
    USAGE = 2
    UNAVAILABLE = 3
    DEPLOY_FAILED = 4
    AUTH = 5
    NOT_FOUND = 6
    REJECTED = 7
    TIMEOUT = 8


app = typer.Typer(help="edgefleet command line", no_args_is_help=True, add_completion=False)
models_app = typer.Typer(help="publish, browse, stage and deprecate models", no_args_is_help=True)
devices_app = typer.Typer(help="enrolled devices", no_args_is_help=True)
deployments_app = typer.Typer(help="deployments", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(devices_app, name="devices")
app.add_typer(deployments_app, name="deployments")
console = Console()
err = Console(stderr=True)
T = TypeVar("T")

JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output on stdout")]


def config_path() -> Path:
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
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
    as_json: JsonOpt = False,
) -> None:
    saved: dict[str, str] = {}
    path = config_path()
    if path.exists():
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError):
            _fail(ExitCode.USAGE, f"cannot read {path}: run `fleetctl login` again")
    state.server = server or saved.get("server", "")
    state.token = token or saved.get("token", "")
    state.as_json = as_json


def _fail(code: ExitCode, message: str) -> NoReturn:
    err.print(f"[red]error:[/] {message}", highlight=False)
    raise typer.Exit(int(code))


def _client() -> FleetClient:
    if not state.server or not state.token:
        _fail(
            ExitCode.USAGE,
            "no server or token: use --server/--token, FLEET_SERVER/FLEET_TOKEN "
            "or `fleetctl login`",
        )
    return FleetClient(state.server, state.token)


def exit_code_for(status: int) -> ExitCode:
    if status in (401, 403):
        return ExitCode.AUTH
    if status == 404:
        return ExitCode.NOT_FOUND
    if status == 422:
        return ExitCode.REJECTED
    return ExitCode.UNAVAILABLE if status >= 500 else ExitCode.REFUSED


def _run(fn: Callable[..., T], *args: Any, **kw: Any) -> T:
    try:
        return fn(*args, **kw)
    except FleetAPIError as e:
        failures = (e.body.get("parity") or {}).get("failures") or []
        extra = "".join(f"\n  parity: {f}" for f in failures)
        _fail(exit_code_for(e.status), f"{e.status}: {e.detail}{extra}")
    except FleetConnectionError as e:
        _fail(ExitCode.UNAVAILABLE, str(e))


def _json_out(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def _emit(data: Any, columns: list[str], title: str, as_json: bool = False) -> None:
    if as_json or state.as_json:
        _json_out(data)
        return
    rows = data if isinstance(data, list) else [data]
    table = Table(title=title)
    for c in columns:
        table.add_column(c)
    for r in rows:
        table.add_row(*[_cell(r.get(c, "")) for c in columns])
    console.print(table)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


@app.command()
def login(
    server: Annotated[str, typer.Option(prompt=True, envvar="FLEET_SERVER")],
    token: Annotated[str, typer.Option(prompt=True, hide_input=True, envvar="FLEET_TOKEN")],
) -> None:
    """Check the server and token, then save them in the user's config dir (mode 0600)."""
    with FleetClient(server, token) as c:
        _run(c.models)
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    # Created 0600 from the start: the token is never readable by other users.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"server": server, "token": token}, f)
    os.replace(tmp, path)
    err.print(f"logged in to {server}; saved to {path}")


# -- models ----------------------------------------------------------------------------


@contextmanager
def _upload_progress(label: str) -> Iterator[Callable[[int, int], None]]:
    """A transfer bar while the file uploads, then a spinner while the server converts."""
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )
    spinner = err.status("server: converting, checking parity, measuring, signing")
    task = bar.add_task(f"uploading {label}", total=None)
    uploaded = False

    def update(sent: int, total: int) -> None:
        nonlocal uploaded
        bar.update(task, completed=sent, total=total)
        if sent >= total and not uploaded:
            uploaded = True
            bar.stop()
            spinner.start()

    bar.start()
    try:
        yield update
    finally:
        if uploaded:
            spinner.stop()
        else:
            bar.stop()


@models_app.command("publish")
def models_publish(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    name: Annotated[str, typer.Option("--name", help="model name: [a-z0-9_.-]")],
    sample: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(exists=True, dir_okay=False, help="CSV with a header row"),
    ] = None,
    tolerance: Annotated[float, typer.Option(min=0, max=1, help="parity tolerance")] = 1e-4,
    force: Annotated[bool, typer.Option(help="register even if parity fails")] = False,
    optimized: Annotated[
        bool, typer.Option(help="also register the optimized variant as the next version")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Upload FILE (ONNX or skops): the server converts, checks, signs and registers it."""
    with _client() as c, _upload_progress(file.name) as progress:
        result = _run(
            c.publish,
            name,
            file,
            sample=sample,
            tolerance=tolerance,
            force=force,
            variant="optimized" if optimized else None,
            progress=progress,
        )
    if as_json or state.as_json:
        _json_out(result)
        return
    _show_version(result, "published")


@models_app.command("convert")
def models_convert(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False)],
    out: Annotated[Path, typer.Option("--out", help="where to write the ONNX file")],
    sample: Annotated[Optional[Path], typer.Option(exists=True, dir_okay=False)] = None,  # noqa: UP045
) -> None:
    """Convert a pickle/joblib model locally (your own file, on your own machine) to ONNX."""
    import converters
    from converters.exceptions import ConverterError
    from converters.loading import convert_pickle_locally

    try:
        estimator = convert_pickle_locally(file)
        sample_bytes = sample.read_bytes() if sample else None
        result = converters.convert_estimator(estimator, sample_bytes)
    except ConverterError as e:
        _fail(ExitCode.REJECTED, str(e))
    out.write_bytes(result.onnx_bytes)
    err.print(
        f"wrote {out} ({len(result.onnx_bytes)} bytes); publish it with "
        f"`fleetctl models publish {out} --name NAME`"
    )


@models_app.command("list")
def models_list(
    tag: Annotated[Optional[str], typer.Option(help="versions with this tag")] = None,  # noqa: UP045
    stage: Annotated[Optional[str], typer.Option(help="versions in this stage")] = None,  # noqa: UP045
    prefix: Annotated[Optional[str], typer.Option(help="names starting with this")] = None,  # noqa: UP045
    as_json: JsonOpt = False,
) -> None:
    """One row per model; --tag/--stage keep models with a matching version."""
    with _client() as c:
        rows = _run(c.models, prefix=prefix, tag=tag, stage=stage)
    columns = ["name", "latest_version", "versions", "production_version", "tags", "updated_at"]
    if tag or stage:
        columns.insert(3, "matching_versions")
    _emit(rows, columns, "models", as_json)


@models_app.command("versions")
def models_versions(
    name: str,
    tag: Annotated[Optional[str], typer.Option()] = None,  # noqa: UP045
    stage: Annotated[Optional[str], typer.Option()] = None,  # noqa: UP045
    as_json: JsonOpt = False,
) -> None:
    """Every version of NAME."""
    with _client() as c:
        rows = _run(c.versions, name, tag=tag, stage=stage)
    for r in rows:
        r["p50_us"] = r.get("latency", {}).get("single_row_p50_us")
    _emit(
        rows,
        ["version", "stage", "variant", "tags", "deprecated", "size", "p50_us", "created_at"],
        f"versions of {name}",
        as_json,
    )


def _show_version(v: dict[str, Any], title: str) -> None:
    table = Table(title=f"{title}: {v['name']}:{v['version']}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    lat = v.get("latency") or {}
    parity = v.get("parity") or {}
    rows = [
        ("sha256", v["sha256"]),
        ("stage", v.get("stage", "")),
        (
            "variant",
            v.get("variant", "") + (f" of {v['base_version']}" if v.get("base_version") else ""),
        ),
        ("variants", _cell(v.get("variants"))),
        ("tags", _cell(v.get("tags"))),
        ("deprecated", "yes: " + v.get("deprecated_reason", "") if v.get("deprecated") else "no"),
        ("size", f"{v['size']} bytes"),
        ("opsets", _opsets(v)),
        ("ort_min", v.get("ort_min", "")),
        ("framework", _cell(v.get("framework"))),
        ("parity", _parity_line(parity)),
        (
            "latency",
            f"single row p50 {lat.get('single_row_p50_us', '-')} µs; "
            f"batch {lat.get('batch_rows', '-')} rows {lat.get('batch_p50_ms', '-')} ms "
            f"({lat.get('batch_rows_per_s', '-')} rows/s)",
        ),
        ("published", f"{v.get('published_by', '')} at {v.get('created_at', '')}"),
        ("sample sha256", str((v.get("lineage") or {}).get("sample_sha256"))),
    ]
    for field, value in rows:
        table.add_row(field, str(value))
    console.print(table)


def _opsets(v: dict[str, Any]) -> str:
    found = v.get("opsets") or {"": v.get("opset")}
    return ", ".join(f"{domain or 'ai.onnx'} {version}" for domain, version in found.items())


def _parity_line(parity: dict[str, Any]) -> str:
    if not parity:
        return "-"
    if not parity.get("compared", True):
        return "not compared: " + str(parity.get("reason", ""))
    verdict = "passed" if parity.get("passed") else "FAILED"
    if parity.get("forced"):
        verdict += " (forced)"
    parts = []
    for out, r in (parity.get("outputs") or {}).items():
        if "agreement" in r:
            parts.append(f"{out}: agreement {r['agreement']}")
        elif "max_abs" in r:
            parts.append(f"{out}: max abs {r['max_abs']}")
    return f"{verdict} on {parity.get('rows')} {parity.get('source')} rows; " + "; ".join(parts)


@models_app.command("show")
def models_show(name: str, version: int, as_json: JsonOpt = False) -> None:
    """One version: parity, latency, lineage, stage, tags."""
    with _client() as c:
        v = _run(c.model_version, name, version)
    if as_json or state.as_json:
        _json_out(v)
        return
    _show_version(v, "model")


def _changed(version: dict[str, Any], as_json: bool, message: str) -> None:
    """After a change to a version: the version as JSON, or one line for people."""
    if as_json or state.as_json:
        _json_out(version)
    else:
        err.print(message)


@models_app.command("stage")
def models_stage(name: str, version: int, stage: str, as_json: JsonOpt = False) -> None:
    """Set STAGE (none, staging, production, archived); production archives the old one."""
    with _client() as c:
        v = _run(c.set_stage, name, version, stage)
    _changed(v, as_json, f"{name}:{version} is now {v['stage']}")


@models_app.command("tag")
def models_tag(
    name: str,
    version: int,
    add: Annotated[Optional[list[str]], typer.Option("--add")] = None,  # noqa: UP045
    remove: Annotated[Optional[list[str]], typer.Option("--remove")] = None,  # noqa: UP045
    as_json: JsonOpt = False,
) -> None:
    """Add or remove tags of a version."""
    if not add and not remove:
        _fail(ExitCode.USAGE, "give --add TAG and/or --remove TAG")
    with _client() as c:
        v = _run(c.change_tags, name, version, add=add, remove=remove)
    _changed(v, as_json, f"{name}:{version} tags: {_cell(v['tags']) or '-'}")


@models_app.command("deprecate")
def models_deprecate(
    name: str,
    version: int,
    reason: Annotated[str, typer.Option(help="why; shown with the version")] = "",
    as_json: JsonOpt = False,
) -> None:
    """Deprecate a version: it can no longer be deployed (one way)."""
    with _client() as c:
        v = _run(c.deprecate, name, version, reason)
    _changed(v, as_json, f"{name}:{version} is deprecated")


@models_app.command("optimize")
def models_optimize(
    name: str,
    version: int,
    tolerance: Annotated[float, typer.Option(min=0, max=1)] = 1e-2,
    quantize: Annotated[bool, typer.Option(help="try int8 dynamic quantization")] = True,
    force: bool = False,
    as_json: JsonOpt = False,
) -> None:
    """Register the optimized variant of NAME:VERSION as a new version."""
    with _client() as c, err.status("server: optimizing, checking parity, signing"):
        v = _run(
            c.publish_variant, name, version, tolerance=tolerance, quantize=quantize, force=force
        )
    if as_json or state.as_json:
        _json_out(v)
        return
    _show_version(v, "variant")


# -- deployments and devices -------------------------------------------------------------


@app.command()
def deploy(
    ref: Annotated[str, typer.Argument(help="NAME:VERSION")],
    device: Annotated[Optional[list[str]], typer.Option("--device", help="repeatable")] = None,  # noqa: UP045
    group: Annotated[Optional[str], typer.Option("--group")] = None,  # noqa: UP045
    wait: Annotated[bool, typer.Option(help="wait until every device finished")] = False,
    timeout: Annotated[float, typer.Option(help="seconds to --wait")] = 300.0,
    as_json: JsonOpt = False,
) -> None:
    """Deploy NAME:VERSION to devices or a group."""
    name, _, ver = ref.partition(":")
    if not name or not ver.isdigit() or bool(device) == bool(group):
        _fail(ExitCode.USAGE, "usage: fleetctl deploy NAME:VERSION (--device ID ... | --group G)")
    with _client() as c:
        dep = _run(c.deploy, name, int(ver), devices=device, group=group)
        if wait:
            try:
                with err.status(f"waiting for {dep['id']}"):
                    dep = _run(c.wait_deployment, dep["id"], timeout=timeout)
            except TimeoutError as e:
                _fail(ExitCode.TIMEOUT, str(e))
    _emit(dep, ["id", "model", "version", "counts"], "deployment", as_json)
    if wait and (dep["counts"].get("failed") or dep["counts"].get("rolled_back")):
        raise typer.Exit(int(ExitCode.DEPLOY_FAILED))


@devices_app.command("list")
def devices_list(as_json: JsonOpt = False) -> None:
    with _client() as c:
        rows = _run(c.devices)
    _emit(rows, ["id", "group", "state", "models", "last_seen", "revoked"], "devices", as_json)


@deployments_app.command("show")
def deployments_show(deployment_id: str, as_json: JsonOpt = False) -> None:
    with _client() as c:
        dep = _run(c.deployment, deployment_id)
    if as_json or state.as_json:
        _json_out(dep)
        return
    _emit(
        dep["devices"],
        ["device", "status", "reason", "message", "updated_at"],
        f"deployment {dep['id']} of {dep['model']}:{dep['version']}",
    )


def main() -> None:
    app()
