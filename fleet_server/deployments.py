"""Deployments: resolve target devices, sign their new assignments, notify them."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from edge_agent import protocol
from fleet_server.exceptions import InvalidRequestError
from fleet_server.registry import get_version
from fleet_server.tables import Assignment, Deployment, DeploymentDevice, Device

if TYPE_CHECKING:
    from fleet_server.services import FleetServices


def resolve_devices(session: Session, devices: list[str] | None, group: str | None) -> list[str]:
    if devices:
        rows = session.scalars(select(Device).where(Device.id.in_(devices))).all()
        found = {d.id for d in rows if d.revoked_at is None}
        missing = sorted(set(devices) - found)
        if missing:
            raise InvalidRequestError(f"unknown or revoked devices: {', '.join(missing)}")
        return sorted(found)
    if group:
        ids = session.scalars(
            select(Device.id).where(Device.group == group, Device.revoked_at.is_(None))
        ).all()
        if not ids:
            raise InvalidRequestError(f"group {group!r} has no enrolled devices")
        return sorted(ids)
    raise InvalidRequestError("target needs 'devices' or 'group'")


def create_deployment(
    services: FleetServices,
    session: Session,
    *,
    actor: str,
    model: str,
    version: int,
    devices: list[str] | None,
    group: str | None,
) -> Deployment:
    mv = get_version(session, model, version)
    if mv.deprecated:
        raise InvalidRequestError(f"{model}:{version} is deprecated")
    device_ids = resolve_devices(session, devices, group)
    dep = Deployment(
        id="dep-" + secrets.token_hex(6),
        model=model,
        version=version,
        target={"devices": devices} if devices else {"group": group},
        created_by=actor,
    )
    session.add(dep)
    files: dict[str, bytes] = {}
    with services.publish_lock:
        for device_id in device_ids:
            session.add(DeploymentDevice(deployment_id=dep.id, device_id=device_id))
            row = session.get(Assignment, device_id)
            if row is None:
                row = Assignment(device_id=device_id, serial=0, models=[])
                session.add(row)
            entries: list[dict[str, Any]] = [m for m in row.models if m["name"] != model]
            entries.append(
                {
                    "name": model,
                    "version": version,
                    "package": mv.package_target,
                    "deployment": dep.id,
                }
            )
            row.models = sorted(entries, key=lambda m: str(m["name"]))
            row.serial += 1
            assignment = protocol.Assignment(
                device=device_id,
                serial=row.serial,
                models=tuple(protocol.AssignedModel(**m) for m in row.models),
            )
            files[protocol.assignment_target_path(device_id)] = assignment.to_bytes()
        session.flush()
        services.tuf.add_targets(files)
        session.commit()
    services.notify(device_ids)
    return dep


def deployment_status(session: Session, dep: Deployment) -> list[DeploymentDevice]:
    return list(
        session.scalars(
            select(DeploymentDevice)
            .where(DeploymentDevice.deployment_id == dep.id)
            .order_by(DeploymentDevice.device_id)
        )
    )
