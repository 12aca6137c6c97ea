"""Server settings: defaults, then ``<data_dir>/server.toml``, then ``FLEET_SERVER_<KEY>``.

There is no settings singleton: ``create_app(settings)`` receives one ``Settings`` object.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from fleet_server.exceptions import ConfigurationError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ENV_PREFIX = "FLEET_SERVER_"


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    db_url: str = ""  # empty: SQLite file in data_dir
    mqtt_url: str = ""  # empty: start the embedded broker
    host: str = "127.0.0.1"
    port: int = 8000
    public_url: str = ""  # how agents reach the API; empty: http://host:port
    embedded_mqtt_host: str = "127.0.0.1"
    embedded_mqtt_port: int = 1883  # 0 picks a free port
    agent_mqtt_url: str = ""  # broker URL handed to agents; empty: the one the server uses
    mqtt_client_id: str = "fleet-server"
    mqtt_shared_group: str = ""  # replicas: share ingestion via $share/<group>/... (MQTT 5)
    mqtt_tls_ca: str = ""
    mqtt_tls_cert: str = ""
    mqtt_tls_key: str = ""
    broker_dir: str = ""  # written by `fleet-server broker-config`: revocations go there
    broker_pid_file: str = ""  # Mosquitto's pid file: SIGHUP after a revocation
    cert_renew_days: int = 30  # devices renew their certificate this long before expiry
    serve_tuf_over_https: bool = False  # GET /tuf/...: the optional HTTPS transport
    timestamp_refresh_s: float = 3600.0
    staleness_s: float = 300.0
    drift_min_rows: int = 1000  # a merged window is evaluated only with this many rows
    drift_consecutive: int = 3  # breaches in a row before a drift alert
    drift_interval_s: float = 30.0
    max_upload_bytes: int = 200 * 1024 * 1024
    max_sample_bytes: int = 20 * 1024 * 1024
    publish_rate_per_minute: int = 30
    enrollment_token_ttl_s: int = 24 * 3600
    cert_days: int = 90
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def database_url(self) -> str:
        return self.db_url or f"sqlite:///{self.data_dir / 'fleet.db'}"

    @property
    def api_url(self) -> str:
        return self.public_url or f"http://{self.host}:{self.port}"

    @classmethod
    def load(cls, data_dir: Path, **overrides: Any) -> Settings:
        """Defaults, then ``server.toml`` in the data dir, then the environment, then overrides."""
        values: dict[str, Any] = {}
        cfg = data_dir / "server.toml"
        if cfg.exists():
            try:
                values.update(tomllib.loads(cfg.read_text()))
            except tomllib.TOMLDecodeError as e:
                raise ConfigurationError(f"{cfg}: {e}") from e
        known = {f.name: f for f in fields(cls) if f.name not in ("data_dir", "extra")}
        for name in known:
            env = os.environ.get(ENV_PREFIX + name.upper())
            if env is not None:
                values[name] = env
        values.update({k: v for k, v in overrides.items() if v is not None})
        unknown = set(values) - set(known)
        if unknown:
            raise ConfigurationError(f"unknown settings: {', '.join(sorted(unknown))}")
        settings = cls(data_dir=data_dir)
        typed: dict[str, Any] = {}
        for name, value in values.items():
            default = getattr(settings, name)
            try:
                typed[name] = type(default)(value)
            except (TypeError, ValueError) as e:
                raise ConfigurationError(
                    f"setting {name}: {value!r} is not a {type(default).__name__}"
                ) from e
        return replace(settings, **typed)
