"""Model registry: convert, check, sign as TUF targets, register an immutable version."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from edge_agent import protocol
from edge_agent.exceptions import ProtocolError
from fleet_server.exceptions import InvalidRequestError, ModelRejectedError, NotFoundError
from fleet_server.tables import ModelVersion

if TYPE_CHECKING:
    from fleet_server.services import FleetServices


def publish_model(
    services: FleetServices,
    session: Session,
    *,
    actor: str,
    name: str,
    data: bytes,
    filename: str,
    sample: bytes | None,
    tolerance: float,
    force: bool,
) -> ModelVersion:
    from converters.exceptions import ConverterError

    import converters

    try:
        protocol.validate_model_name(name)
    except ProtocolError as e:
        raise InvalidRequestError(str(e)) from e
    try:
        conv = converters.convert(
            data, filename=filename, sample=sample, tolerance=tolerance, force=force
        )
    except ConverterError as e:
        details: dict[str, Any] = {"error": type(e).__name__}
        report = getattr(e, "report", None)
        if isinstance(report, dict):
            details["parity"] = report
        raise ModelRejectedError(str(e), details) from e

    with services.publish_lock:
        latest = session.scalar(
            select(func.max(ModelVersion.version)).where(ModelVersion.name == name)
        )
        version = (latest or 0) + 1
        model_target = protocol.model_target_path(name, version)
        package_target = protocol.package_target_path(name, version)
        package = protocol.ModelPackage(
            name=name,
            version=version,
            model_target=model_target,
            model_sha256=conv.sha256,
            inputs=tuple(conv.inputs),
            outputs=tuple(conv.outputs),
            opset=conv.opset,
            ort_min=conv.ort_min,
            selftest=conv.selftest,
            tolerance=max(tolerance, 1e-5),
            profile=conv.profile,
        )
        row = ModelVersion(
            name=name,
            version=version,
            sha256=conv.sha256,
            size=len(conv.onnx_bytes),
            opset=conv.opset,
            ort_min=conv.ort_min,
            framework=dict(conv.framework),
            inputs=[asdict(s) for s in conv.inputs],
            outputs=[asdict(s) for s in conv.outputs],
            parity=conv.parity,
            profile=conv.profile,
            lineage={
                "filename": filename,
                "converters": dict(conv.converter_versions),
                "sample_sha256": conv.sample_sha256,
                "published_by": actor,
            },
            package_target=package_target,
            published_by=actor,
        )
        session.add(row)
        session.flush()  # reserves (name, version) before anything is signed
        services.tuf.add_targets(
            {model_target: conv.onnx_bytes, package_target: package.to_bytes()},
            custom={
                # Read by the agent before download: refuse what it cannot run.
                model_target: {"ort_min": conv.ort_min, "opset": conv.opset},
                package_target: {"name": name, "version": version},
            },
        )
        session.commit()
    return row


def get_version(session: Session, name: str, version: int) -> ModelVersion:
    row = session.scalar(
        select(ModelVersion).where(ModelVersion.name == name, ModelVersion.version == version)
    )
    if row is None:
        raise NotFoundError(f"model {name!r} has no version {version}")
    return row
