"""Agent configuration: ``agent.toml`` (or ``--config``), then ``EDGE_AGENT_<KEY>``."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from edge_agent.exceptions import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ENV_PREFIX = "EDGE_AGENT_"
CONFIG_NAME = "agent.toml"


@dataclass(frozen=True)
class AgentConfig:
    data_dir: Path
    device_id: str = ""
    server_url: str = ""
    mqtt_url: str = ""
    mqtt_tls: bool = False  # mTLS with the device certificate (mqtts:// implies it)
    fetch_via: str = "mqtt"  # "mqtt" (default, one outbound port) or "https" (server_url)
    api_host: str = "127.0.0.1"
    api_port: int = 8501  # 0 picks a free port, written to <data_dir>/api.port
    unix_socket: bool = True
    heartbeat_s: float = 30.0
    summary_window_s: float = 300.0
    summary_k: int = 5  # cells with fewer rows are merged or suppressed
    summary_min_rows: int = 100  # smaller windows are held and merged
    summary_epsilon: float = 0.0  # > 0: differential-privacy noise per window
    update_check_s: float = 300.0
    fetch_timeout_s: float = 30.0
    cert_renew_days: float = 30.0  # renew the device certificate this long before expiry
    keep_versions: int = 3
    min_free_bytes: int = 50 * 1024 * 1024
    outbox_max_bytes: int = 20 * 1024 * 1024
    outbox_max_age_s: float = 7 * 24 * 3600.0
    max_request_bytes: int = 32 * 1024 * 1024
    max_model_memory_bytes: int = 512 * 1024 * 1024  # onnxruntime arena cap for all models

    @property
    def socket_path(self) -> Path:
        return self.data_dir / "oip.sock"

    @classmethod
    def load(cls, data_dir: Path, config_file: Path | None = None) -> AgentConfig:
        """Defaults, ``DATA_DIR/agent.toml`` (written at enrollment), then ``config_file``
        (the operator's, e.g. /etc/edge-agent/agent.toml), then the environment."""
        paths = [data_dir / CONFIG_NAME]
        if config_file is not None and config_file != paths[0]:
            paths.append(config_file)
        values: dict[str, Any] = {}
        for path in paths:
            if path.exists():
                try:
                    values.update(tomllib.loads(path.read_text()))
                except tomllib.TOMLDecodeError as e:
                    raise ConfigError(f"{path}: {e}") from e
        known = {f.name for f in fields(cls)} - {"data_dir"}
        for name in known:
            env = os.environ.get(ENV_PREFIX + name.upper())
            if env is not None:
                values[name] = env
        values.pop("data_dir", None)
        unknown = set(values) - known
        if unknown:
            where = " or ".join(map(str, paths))
            raise ConfigError(f"unknown settings in {where}: {', '.join(sorted(unknown))}")
        base = cls(data_dir=data_dir)
        typed: dict[str, Any] = {}
        for name, value in values.items():
            default = getattr(base, name)
            try:
                if isinstance(default, bool) and isinstance(value, str):
                    typed[name] = value.lower() in ("1", "true", "yes", "on")
                else:
                    typed[name] = type(default)(value)
            except (TypeError, ValueError) as e:
                raise ConfigError(
                    f"setting {name}: {value!r} is not a {type(default).__name__}"
                ) from e
        return replace(base, **typed)

    def to_toml(self) -> str:
        lines = ["# edge-agent configuration; EDGE_AGENT_<KEY> environment variables override it."]
        for f in fields(self):
            if f.name == "data_dir":
                continue
            value = getattr(self, f.name)
            if isinstance(value, bool):
                lines.append(f"{f.name} = {'true' if value else 'false'}")
            elif isinstance(value, (int, float)):
                lines.append(f"{f.name} = {value}")
            else:
                lines.append(f"{f.name} = {json.dumps(str(value))}")
        return "\n".join(lines) + "\n"
