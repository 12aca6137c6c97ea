"""Uplink ingestion: idempotent on (device, seq), batched, acknowledged after commit."""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import bindparam, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from edge_agent import protocol
from edge_agent.exceptions import ProtocolError
from fleet_server.alerting import raise_alert
from fleet_server.identity_watch import IdentityWatch
from fleet_server.tables import Deployment, DeploymentDevice, Device, Telemetry, utcnow

log = logging.getLogger(__name__)


def parse_uplinks(batch: list[tuple[str, bytes]]) -> list[protocol.Envelope]:
    out = []
    for topic, payload in batch:
        try:
            env = protocol.Envelope.from_bytes(payload)
            # Guards against a device reporting for another: the topic is bound to the
            # device's identity by the broker ACL, so the body must name the same device.
            if protocol.device_from_topic(topic) != env.device:
                raise ProtocolError("envelope device does not match its topic")
        except ProtocolError as e:
            log.warning("dropping uplink on %s: %s", topic, e)
            continue
        out.append(env)
    return out


def ingest(
    session: Session, envelopes: list[protocol.Envelope], watch: IdentityWatch | None = None
) -> dict[str, list[int]]:
    """Store envelopes once each; return the seqs to acknowledge per device."""
    by_device: dict[str, list[protocol.Envelope]] = defaultdict(list)
    for env in envelopes:
        by_device[env.device].append(env)
    known = {
        d.id: d
        for d in session.scalars(select(Device).where(Device.id.in_(list(by_device))))
        if d.revoked_at is None  # a revoked device's reports are neither stored nor acked
    }
    rows: list[dict[str, Any]] = []
    for device_id, envs in by_device.items():
        if device_id in known:
            rows.extend(
                {
                    "device_id": device_id,
                    "seq": e.seq,
                    "kind": e.kind,
                    "ts": datetime.fromtimestamp(e.ts, timezone.utc),
                    "received_at": utcnow(),
                    "body": e.body,
                }
                for e in envs
            )
    if not rows:
        return {}
    dialect = session.get_bind().dialect.name
    ins = (postgresql if dialect == "postgresql" else sqlite).insert(Telemetry)
    stmt = ins.on_conflict_do_nothing(index_elements=["device_id", "seq"])
    # executemany with RETURNING ("insertmanyvalues"): one cached statement for every batch
    # instead of recompiling a 500-row VALUES literal; RETURNING names the rows that are new.
    result = session.connection().execute(
        stmt.returning(Telemetry.device_id, Telemetry.seq), rows
    )
    fresh = {(r[0], r[1]) for r in result}
    acks: dict[str, list[int]] = {}
    seen: dict[str, float] = {}
    for device_id, envs in by_device.items():
        if device_id not in known:
            continue
        device = known[device_id]
        for env in sorted(envs, key=lambda e: e.seq):
            if (device_id, env.seq) in fresh:  # side effects once, in sequence order
                _apply(session, device, env, watch)
                seen[device_id] = max(seen.get(device_id, env.ts), env.ts)
            elif env.kind == "heartbeat" and isinstance(env.body.get("instance"), str):
                _check_resend(session, device, env)
        acks[device_id] = [e.seq for e in envs]
    _touch_last_seen(session, seen, dialect)
    return acks


def _touch_last_seen(session: Session, seen: dict[str, float], dialect: str) -> None:
    """One statement per batch (not one UPDATE per device): last_seen only moves forward."""
    if not seen:
        return
    data = [(d, datetime.fromtimestamp(ts, timezone.utc)) for d, ts in seen.items()]
    if dialect == "postgresql":  # two array parameters: the statement text never changes
        session.execute(
            text(
                "UPDATE devices SET last_seen = GREATEST(COALESCE(devices.last_seen, u.ts), u.ts)"
                " FROM unnest(CAST(:ids AS varchar[]), CAST(:tss AS timestamptz[])) AS u(id, ts)"
                " WHERE devices.id = u.id"
            ),
            {"ids": [d for d, _ in data], "tss": [ts for _, ts in data]},
        )
        return
    session.connection().execute(
        update(Device)
        .where(Device.id == bindparam("d"))
        .where(or_(Device.last_seen.is_(None), Device.last_seen < bindparam("ts")))
        .values(last_seen=bindparam("ts")),
        [{"d": d, "ts": ts} for d, ts in data],
    )


def _apply(
    session: Session, device: Device, env: protocol.Envelope, watch: IdentityWatch | None
) -> None:
    if env.kind == "heartbeat":
        models = env.body.get("models")
        if isinstance(models, dict):
            device.models = models
        device.last_heartbeat = env.body
        device.state = str(env.body.get("state", "online"))[:20]
        instance = env.body.get("instance")
        if watch is not None and isinstance(instance, str) and watch.observe(device.id, instance):
            raise_alert(
                session,
                "duplicate_identity",
                f"{device.id}: one certificate is in use by two agents at once",
                device_id=device.id,
                severity="critical",
                detail={"instance": instance},
            )
    elif env.kind == "deployment":
        _apply_deployment(session, device, env.body)
    elif env.kind == "alert":
        raise_alert(
            session,
            "device_refusal",
            f"{device.id} refused an update: {env.body.get('reason', '')}",
            device_id=device.id,
            detail=env.body,
        )
        _note_refusal(session, device, env.body)


def _check_resend(session: Session, device: Device, env: protocol.Envelope) -> None:
    """A resend carries the same instance; another instance with the same sequence number
    means two agents share one identity (a copied data dir or a stolen key)."""
    stored = session.scalar(
        select(Telemetry.body).where(Telemetry.device_id == device.id, Telemetry.seq == env.seq)
    )
    if isinstance(stored, dict) and stored.get("instance") not in (None, env.body["instance"]):
        raise_alert(
            session,
            "duplicate_identity",
            f"{device.id}: two agents send under one identity (sequence {env.seq} seen twice)",
            device_id=device.id,
            severity="critical",
            detail={"instances": [stored.get("instance"), env.body["instance"]]},
        )


def _apply_deployment(session: Session, device: Device, body: dict[str, Any]) -> None:
    dep_id = body.get("deployment")
    status = body.get("status")
    if not isinstance(dep_id, str) or status not in protocol.DEPLOYMENT_STATUSES:
        log.warning("bad deployment report from %s: %r", device.id, body)
        return
    row = session.get(DeploymentDevice, (dep_id, device.id))
    if row is None or session.get(Deployment, dep_id) is None:
        return
    row.status = status
    if status in ("failed", "rolled_back"):
        raise_alert(
            session,
            "deployment_failed",
            f"{device.id}: deployment {dep_id} {status} ({body.get('reason', '')})",
            device_id=device.id,
            detail={"deployment": dep_id, "reason": body.get("reason", "")},
        )
    row.reason = str(body.get("reason", ""))[:40]
    row.message = str(body.get("message", ""))[:2000]
    row.updated_at = utcnow()


def _note_refusal(session: Session, device: Device, body: dict[str, Any]) -> None:
    """A refusal of the metadata itself (expired, rolled back, bad signature) comes before
    the device could read which deployment it is in: show the reason on the device's
    unfinished deployments. The status stays; a later report replaces the reason."""
    reason = body.get("reason")
    if reason not in protocol.REASON_CODES:
        return
    rows = session.scalars(
        select(DeploymentDevice).where(
            DeploymentDevice.device_id == device.id,
            DeploymentDevice.status.in_(("pending", "downloading")),
        )
    )
    for row in rows:
        row.reason = str(reason)
        row.message = str(body.get("message", ""))[:2000]
        row.updated_at = utcnow()


def _aware(dt: datetime) -> datetime:
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)
