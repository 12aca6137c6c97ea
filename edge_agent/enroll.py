"""Enrollment: make the device key here, trade a one-time token and a CSR for an identity."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

from edge_agent.config import CONFIG_NAME, AgentConfig
from edge_agent.exceptions import EnrollmentError
from edge_agent.fsutil import atomic_write


def identity_dir(data_dir: Path) -> Path:
    return data_dir / "identity"


def metadata_dir(data_dir: Path) -> Path:
    return data_dir / "tuf" / "metadata"


def targets_dir(data_dir: Path) -> Path:
    return data_dir / "tuf" / "targets"


def enroll(
    server_url: str,
    token: str,
    data_dir: Path,
    *,
    name: str | None = None,
    api_port: int | None = None,
    timeout: float = 30.0,
) -> AgentConfig:
    from edge_agent.identity import DeviceIdentity
    from edge_agent.trust import TrustClient

    data_dir.mkdir(parents=True, exist_ok=True)
    if (data_dir / CONFIG_NAME).exists() and AgentConfig.load(data_dir).device_id:
        raise EnrollmentError(f"{data_dir} already holds an enrolled agent")
    identity = DeviceIdentity.generate(identity_dir(data_dir))  # the key never leaves
    body = json.dumps(
        {"token": token, "csr": identity.csr_pem(name or "edge-device").decode(), "name": name}
    ).encode()
    req = urllib.request.Request(
        server_url.rstrip("/") + "/api/v1/enroll",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            answer = json.loads(resp.read())
    except urllib.error.HTTPError as e:
        detail = e.read().decode(errors="replace")[:500]
        raise EnrollmentError(f"server refused enrollment ({e.code}): {detail}") from e
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise EnrollmentError(f"cannot reach {server_url}: {e}") from e
    try:
        device_id = str(answer["device_id"])
        identity.save_certificate(answer["certificate"].encode(), answer["ca_certificate"].encode())
        TrustClient.install_root(metadata_dir(data_dir), answer["tuf_root"].encode())
        mqtt_url = str(answer["mqtt_url"])
    except (KeyError, TypeError, AttributeError) as e:
        raise EnrollmentError(f"unexpected enrollment answer: {e}") from e
    config = replace(
        AgentConfig.load(data_dir),
        device_id=device_id,
        server_url=server_url,
        mqtt_url=mqtt_url,
        mqtt_tls=mqtt_url.startswith("mqtts://"),
    )
    if api_port is not None:
        config = replace(config, api_port=api_port)
    atomic_write(data_dir / CONFIG_NAME, config.to_toml().encode())
    return config
