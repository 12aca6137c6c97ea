"""``fleet-server``: init, serve, demo, broker-config, rotate-key, rotate-root."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

from fleet_server.exceptions import FleetServerError

app = typer.Typer(help="edgefleet fleet server", no_args_is_help=True, add_completion=False)
console = Console()
err = Console(stderr=True)

DataDir = Annotated[Path, typer.Option("--data-dir", help="server state: database, keys, CA")]


def initialize(data_dir: Path, db_url: str = "", *, print_token: bool = True) -> str:
    """Create the database, TUF repository and keys, and the fleet CA; return an admin token."""
    from fleet_server.auth import create_token
    from fleet_server.ca import FleetCA
    from fleet_server.db import Database
    from fleet_server.services import ca_dir, root_key_path, tuf_dir
    from fleet_server.settings import Settings
    from fleet_server.tuf_repo import TufRepository

    if (tuf_dir(data_dir) / "metadata").exists():
        raise FleetServerError(f"{data_dir} is already initialized")
    data_dir.mkdir(parents=True, exist_ok=True)
    settings = Settings.load(data_dir, db_url=db_url or None)
    db = Database(settings.database_url)
    db.migrate()
    FleetCA.create(ca_dir(data_dir))
    TufRepository.create(tuf_dir(data_dir), offline_root_key_path=root_key_path(data_dir))
    with db.begin() as session:
        _, token = create_token(session, "admin", "admin")
    db.engine.dispose()
    if print_token:
        console.print(f"[green]initialized[/] {data_dir}")
        console.print(f"root key (keep it offline): {root_key_path(data_dir)}")
        console.print("admin token (shown once, store it now):")
        print(token)
    return token


@app.command()
def init(
    data_dir: DataDir,
    db: Annotated[
        str, typer.Option("--db", help="database URL (default: SQLite in data dir)")
    ] = "",
) -> None:
    """Create the database, TUF keys and repository, the fleet CA; print the admin token."""
    try:
        initialize(data_dir, db)
    except FleetServerError as e:
        err.print(f"[red]error:[/] {e}")
        raise typer.Exit(2) from e


@app.command()
def serve(
    data_dir: DataDir,
    host: Annotated[Optional[str], typer.Option(help="bind address")] = None,  # noqa: UP045
    port: Annotated[Optional[int], typer.Option(help="HTTP port")] = None,  # noqa: UP045
    db: Annotated[Optional[str], typer.Option("--db", help="database URL")] = None,  # noqa: UP045
    mqtt: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--mqtt", help="external broker mqtt://host:port (default: embedded)"),
    ] = None,
    mqtt_port: Annotated[
        Optional[int], typer.Option(help="embedded broker port (0: any free port)")  # noqa: UP045
    ] = None,
) -> None:
    """Serve the API (and the embedded MQTT broker unless --mqtt is given)."""
    import uvicorn

    from fleet_server.app import create_app
    from fleet_server.settings import Settings

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = Settings.load(
        data_dir, host=host, port=port, db_url=db, mqtt_url=mqtt, embedded_mqtt_port=mqtt_port
    )
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="warning")


@app.command()
def demo(
    data_dir: Annotated[Path, typer.Option("--data-dir")] = Path("demo-data"),
    agents: Annotated[int, typer.Option(help="number of local agents")] = 3,
    keep_running: Annotated[bool, typer.Option(help="keep serving after the tour")] = False,
) -> None:
    """The one-command tour: server, embedded broker, agents, a model, inference, telemetry."""
    from fleet_server.demo import run_demo

    raise typer.Exit(run_demo(data_dir, agents=agents, keep_running=keep_running))


def _passphrase(env_name: str) -> bytes | None:
    """A key passphrase from the environment variable ``env_name`` (never a CLI argument:
    those end up in shell history and ``ps``)."""
    import os

    if not env_name:
        return None
    value = os.environ.get(env_name)
    if value is None:
        raise FleetServerError(f"environment variable {env_name} is not set")
    return value.encode()


def _offline_repo(data_dir: Path) -> Any:
    from fleet_server.services import tuf_dir
    from fleet_server.tuf_repo import NullPublisher, TufRepository

    # Offline on purpose: the server must be stopped (it holds the repository in memory);
    # it republishes every root version and the current metadata when it starts again.
    return TufRepository.load(tuf_dir(data_dir), NullPublisher())


PassEnv = Annotated[
    str, typer.Option("--passphrase-env", help="env var holding the root key passphrase")
]


@app.command("rotate-key")
def rotate_key(
    data_dir: DataDir,
    role: Annotated[str, typer.Option("--role", help="targets, snapshot, timestamp or bins")],
    passphrase_env: PassEnv = "",
) -> None:
    """Replace an online signing key (stop the server first). Top-level roles need the
    offline root key; agents follow at their next update cycle."""
    try:
        repo = _offline_repo(data_dir)
        before = repo.root_version
        repo.rotate_online_key(role, root_passphrase=_passphrase(passphrase_env))
    except FleetServerError as e:
        err.print(f"[red]error:[/] {e}")
        raise typer.Exit(2) from e
    console.print(
        f"rotated the {role} key; root version {before} -> {repo.root_version}. "
        "Start the server to publish it."
    )


@app.command("rotate-root")
def rotate_root(
    data_dir: DataDir,
    new_key: Annotated[Path, typer.Option("--new-key", help="file for the new root key")],
    passphrase_env: PassEnv = "",
    new_passphrase_env: Annotated[
        str, typer.Option("--new-passphrase-env", help="env var with the new key's passphrase")
    ] = "",
) -> None:
    """Replace the offline root key (stop the server first): the new root is signed by the
    old and the new key, so agents accept it and then trust only the new key."""
    if new_key.exists():
        err.print(f"[red]error:[/] {new_key} exists; choose a new file")
        raise typer.Exit(2)
    try:
        repo = _offline_repo(data_dir)
        repo.rotate_root(
            new_key,
            old_passphrase=_passphrase(passphrase_env),
            new_passphrase=_passphrase(new_passphrase_env),
        )
    except FleetServerError as e:
        err.print(f"[red]error:[/] {e}")
        raise typer.Exit(2) from e
    console.print(
        f"root version {repo.root_version} signed by the old and the new key; new root key: "
        f"{new_key} (keep it offline). Start the server to publish it."
    )


@app.command("broker-config")
def broker_config(
    data_dir: DataDir,
    out: Annotated[Path, typer.Option("--out", help="directory for mosquitto.conf and friends")],
    port: Annotated[int, typer.Option(help="TLS listener port")] = 8883,
    hostname: Annotated[
        list[str], typer.Option(help="broker host names for its certificate (repeat)")
    ] = ["localhost", "127.0.0.1"],  # noqa: B006
    user: Annotated[str, typer.Option(help="system user Mosquitto runs as")] = "mosquitto",
    bind: Annotated[str, typer.Option(help="listener address")] = "0.0.0.0",
) -> None:
    """Write a production Mosquitto 2 configuration (mTLS, ACL patterns, CRL) and the
    server's own broker identity; print the server settings that use them."""
    write_broker_config(data_dir, out, port=port, hostnames=tuple(hostname), user=user, bind=bind)


def write_broker_config(
    data_dir: Path,
    out: Path,
    *,
    port: int,
    hostnames: tuple[str, ...],
    user: str,
    bind: str,
    quiet: bool = False,
) -> dict[str, str]:
    """Broker files plus ``out/fleet-server/{cert,key}.pem``; returns the server settings."""
    from fleet_server.broker_config import write_mosquitto_config
    from fleet_server.ca import FleetCA
    from fleet_server.services import ca_dir

    ca = FleetCA.load(ca_dir(data_dir))
    paths = write_mosquitto_config(out, ca=ca, port=port, hostnames=hostnames, user=user, bind=bind)
    ident = out / "fleet-server"
    ident.mkdir(parents=True, exist_ok=True)
    cert, key = ca.issue_client_cert_for_server("fleet-server")
    (ident / "cert.pem").write_bytes(cert)
    (ident / "key.pem").write_bytes(key)
    (ident / "key.pem").chmod(0o600)
    settings = {
        "mqtt_url": f"mqtts://{hostnames[0]}:{port}",
        "mqtt_tls_ca": str(paths.ca.absolute()),
        "mqtt_tls_cert": str((ident / "cert.pem").absolute()),
        "mqtt_tls_key": str((ident / "key.pem").absolute()),
        "broker_dir": str(out.absolute()),
    }
    if not quiet:
        console.print(f"wrote {paths.conf} (run: mosquitto -c {paths.conf})")
        console.print(f"add to {data_dir / 'server.toml'}:")
        for k, v in settings.items():
            print(f'{k} = "{v}"')
        print('broker_pid_file = "/run/mosquitto/mosquitto.pid"  # so revocations reload it')
    return settings


@app.command()
def bundle(
    ref: Annotated[str, typer.Argument(help="NAME:VERSION")],
    data_dir: DataDir,
    out: Annotated[Path, typer.Option("--out", help="bundle file to write")],
) -> None:
    """Export a model version with its TUF metadata for air-gapped devices."""
    from fleet_server.bundle import write_bundle
    from fleet_server.services import tuf_dir

    name, _, ver = ref.partition(":")
    if not ver.isdigit():
        err.print("[red]usage:[/] fleet-server bundle NAME:VERSION --data-dir DIR --out FILE")
        raise typer.Exit(2)
    try:
        path = write_bundle(tuf_dir(data_dir), name, int(ver), out)
    except FleetServerError as e:
        err.print(f"[red]error:[/] {e}")
        raise typer.Exit(1) from e
    console.print(
        f"wrote {path} ({path.stat().st_size} bytes); on the device: "
        f"edge-agent import {path.name} --data-dir DIR"
    )


def main() -> None:
    app()
