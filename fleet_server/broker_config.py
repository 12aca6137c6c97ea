"""Production Mosquitto 2 configuration: mTLS, per-device ACL patterns, CRL, revocation.

How the broker knows who a client is (Mosquitto 2.0.11, read in its source and tested in
tests/identity):

- ``require_certificate true``: no certificate from the fleet CA, no TLS handshake.
- ``use_identity_as_username true``: the username is the certificate's CN (the device id);
  a username the client sends is thrown away.
- ``use_username_as_clientid true``: the client id is replaced by that username. Without it,
  device A could connect with client id ``dev-b``, kick B off and take over B's persistent
  session (Mosquitto moves B's subscriptions and queued messages to the newcomer without
  comparing usernames). With it, client ids with ``+``/``#`` are not refused but discarded
  too: they gain nothing.
- ``acl_file`` with ``%u`` patterns: each device reads and writes only its own topics. In
  2.0.x a SUBSCRIBE is always granted; the read ACL is checked for every message delivered,
  retained ones included, so a foreign subscription never receives anything.

Revocation: ``crlfile`` refuses revoked certificates at the handshake, but a live session
keeps going. ``write_acl`` gives revoked device ids an explicit ``deny #`` block, and SIGHUP
makes Mosquitto re-read the ACL (applied to live sessions) and the CRL.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from edge_agent.fsutil import atomic_write
from edge_agent.protocol import TOPIC_ROOT, validate_device_id
from fleet_server.ca import SERVER_IDENTITY_PREFIX, FleetCA

CONF_NAME = "mosquitto.conf"
ACL_NAME = "acl"
CRL_NAME = "crl.pem"
CA_NAME = "ca.pem"
CERT_NAME = "server.pem"
KEY_NAME = "server.key"
STATE_NAME = "edgefleet-broker.json"
PERSISTENCE_DIR = "data"

# A 256 KiB chunk plus topic and properties; anything larger is refused by the broker.
MAX_PACKET_SIZE = 2 * 1024 * 1024
# Mosquitto's defaults (20 in flight, 1000 queued) silently dropped QoS 1 chunks of a
# wildcard subscription; bytes bound a slow client's memory instead of the message count.
MAX_INFLIGHT_MESSAGES = 100
MAX_QUEUED_MESSAGES = 10000
MAX_QUEUED_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class BrokerPaths:
    """Where ``write_mosquitto_config`` put each file."""

    directory: Path
    conf: Path
    acl: Path
    crl: Path
    ca: Path
    cert: Path
    key: Path
    persistence: Path


def broker_paths(out_dir: Path) -> BrokerPaths:
    return BrokerPaths(
        directory=out_dir,
        conf=out_dir / CONF_NAME,
        acl=out_dir / ACL_NAME,
        crl=out_dir / CRL_NAME,
        ca=out_dir / CA_NAME,
        cert=out_dir / CERT_NAME,
        key=out_dir / KEY_NAME,
        persistence=out_dir / PERSISTENCE_DIR,
    )


def render_config(paths: BrokerPaths, *, port: int, bind: str, user: str) -> str:
    """The mosquitto.conf text (packaging/mosquitto/production.conf.template mirrors it)."""
    return f"""\
# edgefleet production Mosquitto 2 configuration, written by `fleet-server broker-config`.
# Commented copy: packaging/mosquitto/production.conf.template
per_listener_settings false
# Mosquitto drops root privileges to this user before it reads any file below.
user {user}
allow_anonymous false
acl_file {paths.acl}
persistence true
persistence_location {paths.persistence}/
autosave_interval 60
persistent_client_expiration 14d
set_tcp_nodelay true
max_packet_size {MAX_PACKET_SIZE}
max_inflight_messages {MAX_INFLIGHT_MESSAGES}
max_queued_messages {MAX_QUEUED_MESSAGES}
max_queued_bytes {MAX_QUEUED_BYTES}
queue_qos0_messages false
log_type error
log_type warning
log_type notice
log_type information
connection_messages true

listener {port} {bind}
protocol mqtt
tls_version tlsv1.2
cafile {paths.ca}
certfile {paths.cert}
keyfile {paths.key}
crlfile {paths.crl}
require_certificate true
use_identity_as_username true
use_username_as_clientid true
"""


def render_acl(server_identities: Sequence[str], revoked_device_ids: Iterable[str]) -> str:
    """The ACL file text; no I/O (packaging/mosquitto/production.acl.template mirrors it)."""
    lines = [
        "# edgefleet broker ACL, written by fleet_server.broker_config (do not edit by hand).",
        "# Per-user rules are checked before the patterns, and a deny ends the check.",
        "",
    ]
    for device_id in sorted(set(revoked_device_ids)):
        # Guards against a topic or ACL-file injection through a device id.
        validate_device_id(device_id)
        lines += [f"# revoked: {device_id}", f"user {device_id}", "topic deny #", ""]
    for name in server_identities:
        lines += ["# the fleet server", f"user {name}", f"topic readwrite {TOPIC_ROOT}/#", ""]
    dev = f"{TOPIC_ROOT}/devices/%u"
    lines += [
        "# every device (username = certificate CN = client id), only its own topics",
        f"pattern write {dev}/up",
        f"pattern readwrite {dev}/probe",
        f"pattern read {dev}/notify",
        f"pattern read {dev}/ack",
        "# shared, read-only artifact topics (Mosquitto warns: no %u/%c in these two)",
        f"pattern read {TOPIC_ROOT}/tuf/#",
        f"pattern read {TOPIC_ROOT}/chunks/#",
        "",
    ]
    return "\n".join(lines)


def _check_server_identities(names: Sequence[str]) -> None:
    for name in names:
        validate_device_id(name)
        # Only names the CA refuses to devices may carry the server's rights.
        if not name.startswith(SERVER_IDENTITY_PREFIX):
            raise ValueError(f"server identity {name!r} must start with {SERVER_IDENTITY_PREFIX}")


def _chown_for(user: str, *paths: Path) -> None:
    """Mosquitto reads its files after dropping root: hand them to that user."""
    if os.geteuid() != 0 or user == "root":
        return
    try:
        pwd.getpwnam(user)
    except KeyError:
        return
    for path in paths:
        shutil.chown(path, user=user)


def write_mosquitto_config(
    out_dir: Path,
    *,
    ca: FleetCA,
    port: int = 8883,
    server_identity: str = SERVER_IDENTITY_PREFIX,
    bind: str = "0.0.0.0",
    hostnames: Sequence[str] = ("localhost", "127.0.0.1"),
    user: str = "mosquitto",
    extra_server_identities: Sequence[str] = (),
    revoked_device_ids: Iterable[str] | None = None,
) -> BrokerPaths:
    """Write mosquitto.conf, ACL, CRL, CA and a fresh broker certificate into ``out_dir``.

    ``revoked_device_ids=None`` keeps the revocations of an earlier run in ``out_dir``, so
    writing the config again never gives a revoked device its topics back.
    """
    identities = [server_identity, *extra_server_identities]
    _check_server_identities(identities)
    if revoked_device_ids is None:
        revoked_device_ids = read_revoked_device_ids(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = broker_paths(out_dir)
    paths.persistence.mkdir(exist_ok=True)
    cert_pem, key_pem = ca.issue_server_cert(hostnames)
    atomic_write(paths.ca, ca.cert_pem, mode=0o644)
    atomic_write(paths.cert, cert_pem, mode=0o644)
    atomic_write(paths.key, key_pem, mode=0o600)
    write_crl(out_dir, ca)
    write_acl(out_dir, revoked_device_ids, server_identities=identities)
    atomic_write(paths.conf, render_config(paths, port=port, bind=bind, user=user).encode())
    _chown_for(user, paths.key, paths.persistence)
    return paths


def _read_state(out_dir: Path) -> dict[str, list[str]]:
    """What the last ``write_acl`` wrote: server identities and revoked device ids."""
    path = out_dir / STATE_NAME
    if not path.exists():
        return {"server_identities": [SERVER_IDENTITY_PREFIX], "revoked_device_ids": []}
    state = json.loads(path.read_text())
    return {
        k: [str(v) for v in state.get(k, [])] for k in ("server_identities", "revoked_device_ids")
    }


def read_revoked_device_ids(out_dir: Path) -> list[str]:
    return _read_state(out_dir)["revoked_device_ids"]


def write_acl(
    out_dir: Path,
    revoked_device_ids: Iterable[str],
    *,
    server_identities: Sequence[str] | None = None,
) -> Path:
    """Rewrite the ACL so ``revoked_device_ids`` (the full list) get nothing.

    Call ``reload_broker`` next. Server identities default to those of the last write.
    """
    names = list(server_identities or _read_state(out_dir)["server_identities"])
    _check_server_identities(names)
    revoked = sorted(set(revoked_device_ids))
    text = render_acl(names, revoked)  # validates every id before anything is written
    state = {"server_identities": names, "revoked_device_ids": revoked}
    atomic_write(out_dir / STATE_NAME, json.dumps(state, indent=1).encode(), mode=0o644)
    path = broker_paths(out_dir).acl
    atomic_write(path, text.encode(), mode=0o644)
    return path


def write_crl(out_dir: Path, ca: FleetCA) -> Path:
    """Write a fresh CRL of every serial revoked at ``ca``; call ``reload_broker`` next."""
    path = broker_paths(out_dir).crl
    atomic_write(path, ca.crl_pem(), mode=0o644)
    return path


def reload_broker(pid: int) -> None:
    """SIGHUP: Mosquitto re-reads its config, ACL (live sessions too), CRL and certificates."""
    os.kill(pid, signal.SIGHUP)


def apply_revocations(
    out_dir: Path, ca: FleetCA, revoked_device_ids: Iterable[str], *, pid: int | None = None
) -> None:
    """CRL (refuses new handshakes) + ACL (cuts live sessions), then SIGHUP when ``pid``."""
    write_crl(out_dir, ca)
    write_acl(out_dir, revoked_device_ids)
    if pid is not None:
        reload_broker(pid)
