"""``edge-agent``: enroll, run, import. Plain argparse: the agent stays light."""

from __future__ import annotations

import argparse
import logging
import shutil
import signal
import sys
from pathlib import Path

from edge_agent.exceptions import EdgeAgentError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-agent", description="edgefleet edge agent")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("enroll", help="make the device key and enroll with a fleet server")
    e.add_argument("--server", required=True, help="fleet server URL, e.g. http://host:8000")
    e.add_argument("--token", required=True, help="one-time enrollment token")
    e.add_argument("--data-dir", required=True, type=Path)
    e.add_argument("--name", help="device id to ask for (default: generated)")
    e.add_argument("--api-port", type=int, help="local inference API port (0: any free port)")
    r = sub.add_parser("run", help="run the daemon")
    r.add_argument("--data-dir", required=True, type=Path)
    r.add_argument("--config", type=Path, help="config file (default: DATA_DIR/agent.toml)")
    i = sub.add_parser("import", help="install an air-gapped bundle (fleet-server bundle)")
    i.add_argument("bundle", type=Path)
    i.add_argument("--data-dir", required=True, type=Path)
    i.add_argument("--config", type=Path)
    i.add_argument("--timeout", type=float, default=120.0)
    return p


def import_bundle(
    bundle: Path, data_dir: Path, config_file: Path | None = None, timeout: float = 120.0
) -> dict[str, object]:
    """Verify and install a bundle; hands it to the running daemon if there is one."""
    import json
    import secrets
    import time

    from edge_agent.bundle import unpack
    from edge_agent.config import AgentConfig
    from edge_agent.daemon import Agent, hold_data_dir

    config = AgentConfig.load(data_dir, config_file)
    inbox = data_dir / "inbox"
    work = inbox / f".{secrets.token_hex(6)}"
    info = unpack(bundle, work)
    lock = hold_data_dir(data_dir)
    if lock is not None:  # no daemon: install here, reports wait in the outbox
        try:
            return Agent(config).apply_bundle(info)
        finally:
            lock.close()
            shutil.rmtree(work, ignore_errors=True)
    ready = work.with_name(work.name.lstrip(".") + ".ready")
    work.rename(ready)
    done = ready.with_suffix(".done")
    deadline = time.monotonic() + timeout
    while not (done / "result.json").exists():
        if time.monotonic() > deadline:
            raise TimeoutError("the running agent did not pick the bundle up in time")
        time.sleep(0.2)
    result: dict[str, object] = json.loads((done / "result.json").read_text())
    shutil.rmtree(done, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("tuf").setLevel(logging.WARNING)
    try:
        if args.command == "enroll":
            from edge_agent.enroll import enroll

            cfg = enroll(
                args.server, args.token, args.data_dir, name=args.name, api_port=args.api_port
            )
            print(f"enrolled as {cfg.device_id}; broker {cfg.mqtt_url}")
            print(f"start the agent: edge-agent run --data-dir {args.data_dir}")
            return 0
        if args.command == "run":
            from edge_agent.config import AgentConfig
            from edge_agent.daemon import Agent

            agent = Agent(AgentConfig.load(args.data_dir, args.config))
            signal.signal(signal.SIGTERM, lambda *_: agent.request_stop())
            agent.run_forever()
            return 0
        if args.command == "import":
            result = import_bundle(args.bundle, args.data_dir, args.config, args.timeout)
            print(
                f"{result.get('model')}:{result.get('version')} {result.get('status')} "
                f"{result.get('reason') or ''} {result.get('message') or ''}".rstrip()
            )
            return 0 if result.get("status") == "active" else 1
    except EdgeAgentError as e:
        print(f"edge-agent: {e}", file=sys.stderr)
        return 2
    except TimeoutError as e:
        print(f"edge-agent: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
