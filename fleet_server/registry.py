"""Model registry: convert, check, sign as TUF targets, register immutable versions; stages,
tags, deprecation, optimized variants, listing and search.

A version's model, package and figures never change after it is registered; only its
stage, tags and deprecation do (and those changes are audited by the API layer).

Stages: ``none`` (new), ``staging``, ``production`` (at most one version per name: the
database enforces it with a partial unique index; promoting a version archives the one
before), ``archived``. A deprecated version cannot be staged, promoted or deployed.
"""

from __future__ import annotations

import hashlib
import re
import statistics
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import String, cast, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from edge_agent import protocol
from edge_agent.exceptions import ProtocolError
from fleet_server.exceptions import (
    ConflictError,
    FleetServerError,
    InvalidRequestError,
    ModelRejectedError,
    NotFoundError,
)
from fleet_server.tables import ModelVersion, utcnow

if TYPE_CHECKING:
    from fleet_server.services import FleetServices

STAGES = ("none", "staging", "production", "archived")
VARIANT_KINDS = ("optimized",)
TAG_RE = re.compile(r"^[a-z0-9][a-z0-9_.:-]{0,39}$")
MAX_TAGS = 32
LATENCY_BATCH_ROWS = 1000


# -- latency at publish ------------------------------------------------------------------


def measure_latency(
    onnx_bytes: bytes,
    feed: dict[str, np.ndarray],
    *,
    batch_rows: int = LATENCY_BATCH_ROWS,
    single_budget_s: float = 0.2,
    batch_budget_s: float = 0.4,
) -> dict[str, Any]:
    """Single-row p50/p90 and batch throughput under onnxruntime, one intra-op thread (as
    agents run it). Bounded by time budgets (about 0.6 s plus one warm-up run each)."""
    import onnxruntime

    from converters.runtime import run, session

    sess = session(onnx_bytes)
    one = {n: a[:1] for n, a in feed.items()}
    run(sess, one)  # warm-up; also proves the row runs
    single: list[float] = []
    start = time.perf_counter()
    while len(single) < 500 and (len(single) < 5 or time.perf_counter() - start < single_budget_s):
        t0 = time.perf_counter()
        sess.run(None, one)
        single.append(time.perf_counter() - t0)
    result: dict[str, Any] = {
        "single_row_p50_us": round(statistics.median(single) * 1e6, 2),
        "single_row_p90_us": round(float(np.quantile(single, 0.9)) * 1e6, 2),
        "single_row_runs": len(single),
        "batch_rows": batch_rows,
        "threads": 1,
        "onnxruntime": onnxruntime.__version__,
        "measured_at": utcnow().isoformat(),
    }
    rows = next(iter(feed.values())).shape[0] if feed else 0
    if rows == 0:
        return {**result, "batch_error": "no rows to build a batch from"}
    big = {n: np.take(a, np.arange(batch_rows) % rows, axis=0) for n, a in feed.items()}
    batch: list[float] = []
    start = time.perf_counter()
    try:
        while len(batch) < 20 and (not batch or time.perf_counter() - start < batch_budget_s):
            t0 = time.perf_counter()
            sess.run(None, big)
            batch.append(time.perf_counter() - t0)
    except Exception as e:  # e.g. a model with a fixed batch dimension of 1
        return {**result, "batch_error": f"{type(e).__name__}: {e}"[:300]}
    p50 = statistics.median(batch)
    return {
        **result,
        "batch_p50_ms": round(p50 * 1e3, 3),
        "batch_rows_per_s": round(batch_rows / p50, 1),
        "batch_runs": len(batch),
    }


def _selftest_feed(
    selftest: dict[str, Any], inputs: tuple[protocol.TensorSpec, ...]
) -> dict[str, np.ndarray]:
    """The self-test rows as an onnxruntime feed (synthesized rows when there are none)."""
    from converters.build import _synthetic_feed
    from converters.specs import numpy_dtype

    tensors = selftest.get("inputs") or {}
    feed: dict[str, np.ndarray] = {}
    for spec in inputs:
        t = tensors.get(spec.name)
        if not t or not t.get("shape") or int(t["shape"][0]) == 0:
            return _synthetic_feed(inputs, rows=16)
        dtype = object if t["datatype"] == "BYTES" else numpy_dtype(t["datatype"])
        feed[spec.name] = np.asarray(t["data"], dtype=dtype).reshape(t["shape"])
    return feed


# -- registering ---------------------------------------------------------------------------


@dataclass
class _Candidate:
    """Everything one new version needs before it gets its number."""

    onnx_bytes: bytes
    sha256: str
    inputs: tuple[protocol.TensorSpec, ...]
    outputs: tuple[protocol.TensorSpec, ...]
    opset: int
    opsets: dict[str, int]
    ort_min: str
    selftest: dict[str, Any]
    tolerance: float
    profile: dict[str, Any]
    framework: dict[str, Any]
    parity: dict[str, Any]
    lineage: dict[str, Any]
    latency: dict[str, Any]
    variant: str = "base"


def _register(
    services: FleetServices,
    session: Session,
    cands: list[_Candidate],
    *,
    name: str,
    actor: str,
    base_version: int | None = None,
) -> list[ModelVersion]:
    """Give each candidate the next version number and sign all of them in one TUF commit.
    ``base_version`` None: every candidate after the first is a variant of the first."""
    rows: list[ModelVersion] = []
    files: dict[str, bytes] = {}
    custom: dict[str, dict[str, Any]] = {}
    with services.publish_lock:
        latest = session.scalar(
            select(ModelVersion.version)
            .where(ModelVersion.name == name)
            .order_by(ModelVersion.version.desc())
            .limit(1)
        )
        version = latest or 0
        for cand in cands:
            version += 1
            base = base_version if base_version is not None else (rows[0].version if rows else None)
            model_target = protocol.model_target_path(name, version)
            package_target = protocol.package_target_path(name, version)
            package = protocol.ModelPackage(
                name=name,
                version=version,
                model_target=model_target,
                model_sha256=cand.sha256,
                inputs=cand.inputs,
                outputs=cand.outputs,
                opset=cand.opset,
                ort_min=cand.ort_min,
                selftest=cand.selftest,
                tolerance=cand.tolerance,
                profile=cand.profile,
            )
            lineage = dict(cand.lineage)
            if base is not None:
                lineage["base"] = {"name": name, "version": base, **lineage.get("base", {})}
            row = ModelVersion(
                name=name,
                version=version,
                sha256=cand.sha256,
                size=len(cand.onnx_bytes),
                opset=cand.opset,
                opsets=dict(cand.opsets),
                ort_min=cand.ort_min,
                framework=dict(cand.framework),
                inputs=[asdict(s) for s in cand.inputs],
                outputs=[asdict(s) for s in cand.outputs],
                parity=cand.parity,
                profile=cand.profile,
                lineage={**lineage, "published_by": actor, "published_at": utcnow().isoformat()},
                latency=cand.latency,
                tags=[],
                stage="none",
                variant=cand.variant,
                base_version=base,
                package_target=package_target,
                published_by=actor,
            )
            session.add(row)
            rows.append(row)
            files[model_target] = cand.onnx_bytes
            files[package_target] = package.to_bytes()
            # Read by the agent before download: refuse what it cannot run.
            custom[model_target] = {"ort_min": cand.ort_min, "opset": cand.opset}
            custom[package_target] = {"name": name, "version": version}
        # Reserves (name, version) before anything is signed; the unique constraint stops
        # a second replica that picked the same number.
        try:
            session.flush()
        except IntegrityError as e:
            session.rollback()
            raise ConflictError(f"another publish of {name!r} won the race; retry") from e
        services.tuf.add_targets(files, custom=custom)
        session.commit()
    return rows


def _rejected(e: Exception) -> ModelRejectedError:
    details: dict[str, Any] = {"error": type(e).__name__}
    report = getattr(e, "report", None)
    if isinstance(report, dict):
        details["parity"] = report
    return ModelRejectedError(str(e), details)


def _variant_candidate(
    onnx_bytes: bytes,
    *,
    selftest: dict[str, Any],
    inputs: tuple[protocol.TensorSpec, ...],
    profile: dict[str, Any],
    framework: dict[str, Any],
    base_lineage: dict[str, Any],
    base_sha256: str,
    tolerance: float,
    quantize: bool,
    force: bool,
) -> _Candidate:
    """converters.optimize on the base ONNX, compared on the base's self-test rows."""
    import onnx
    import onnxruntime

    import converters
    from converters.checks import opsets
    from converters.exceptions import ConverterError
    from converters.parity import enforce
    from converters.runtime import run, session
    from converters.selftest import build_selftest

    feed = _selftest_feed(selftest, inputs)
    try:
        var = converters.optimize(onnx_bytes, feed=feed, quantize=quantize, tolerance=tolerance)
        parity = enforce(var.parity, force=force)
        actual = run(session(var.onnx_bytes), feed)
    except ConverterError as e:
        raise _rejected(e) from e
    rows = next(iter(feed.values())).shape[0]
    return _Candidate(
        onnx_bytes=var.onnx_bytes,
        sha256=var.sha256,
        inputs=var.inputs,
        outputs=var.outputs,
        opset=var.opset,
        opsets=opsets(onnx.load_from_string(var.onnx_bytes)),
        ort_min=var.ort_min,
        # The device checks the variant against the variant's own outputs on these rows.
        selftest=build_selftest(feed, actual, var.inputs, var.outputs, np.arange(rows)),
        tolerance=max(tolerance, 1e-5),
        profile=profile,
        framework=framework,
        parity=parity,
        lineage={
            "filename": base_lineage.get("filename", ""),
            "framework": framework,
            "converters": {
                **base_lineage.get("converters", {}),
                "onnxruntime": onnxruntime.__version__,
            },
            "sample_sha256": base_lineage.get("sample_sha256"),
            "base": {"sha256": base_sha256},
            "variant": {
                "kind": var.kind,
                "size_ratio": round(var.size_ratio, 4),
                "latency_ratio": round(var.latency_ratio, 4),
                "tolerance": tolerance,
                "quantize_requested": quantize,
            },
        },
        latency=measure_latency(var.onnx_bytes, feed),
        variant=var.kind,
    )


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
    variant: str = "",
    variant_tolerance: float = 1e-2,
) -> list[ModelVersion]:
    """Register a new version (and with ``variant="optimized"`` its optimized variant as
    the next version, atomically). Returns the new rows, base first."""
    import converters
    from converters.exceptions import ConverterError

    try:
        protocol.validate_model_name(name)
    except ProtocolError as e:
        raise InvalidRequestError(str(e)) from e
    if variant and variant not in VARIANT_KINDS:
        raise InvalidRequestError(f"variant must be one of {', '.join(VARIANT_KINDS)}")
    try:
        conv = converters.convert(
            data, filename=filename, sample=sample, tolerance=tolerance, force=force
        )
    except ConverterError as e:
        raise _rejected(e) from e
    inputs, outputs = tuple(conv.inputs), tuple(conv.outputs)
    feed = _selftest_feed(conv.selftest, inputs)
    lineage = {
        "filename": filename,
        "framework": dict(conv.framework),
        "converters": dict(conv.converter_versions),
        "sample_sha256": conv.sample_sha256,
        "sample_source": conv.parity.get("source"),
    }
    base = _Candidate(
        onnx_bytes=conv.onnx_bytes,
        sha256=conv.sha256,
        inputs=inputs,
        outputs=outputs,
        opset=conv.opset,
        opsets=dict(conv.opsets) or {"": conv.opset},
        ort_min=conv.ort_min,
        selftest=conv.selftest,
        tolerance=max(tolerance, 1e-5),
        profile=conv.profile,
        framework=dict(conv.framework),
        parity=conv.parity,
        lineage=lineage,
        latency=measure_latency(conv.onnx_bytes, feed),
    )
    cands = [base]
    if variant:
        cands.append(
            _variant_candidate(
                conv.onnx_bytes,
                selftest=conv.selftest,
                inputs=inputs,
                profile=conv.profile,
                framework=dict(conv.framework),
                base_lineage=lineage,
                base_sha256=conv.sha256,
                tolerance=variant_tolerance,
                quantize=True,
                force=force,
            )
        )
    return _register(services, session, cands, name=name, actor=actor)


def _stored_target(services: FleetServices, path: str, sha256: str | None = None) -> bytes:
    """A signed target's bytes from the repository on disk, checked against its metadata."""
    from fleet_server.tuf_repo import content_url

    info = services.tuf.target_info(path)
    if info is None:
        raise NotFoundError(f"target {path!r} is not in the repository")
    digest = info.hashes["sha256"]
    data = (services.tuf.targets_dir / content_url(path, digest)).read_bytes()
    # Guards against a damaged or swapped file on disk becoming the base of a new version.
    if hashlib.sha256(data).hexdigest() != digest or (sha256 and digest != sha256):
        raise FleetServerError(f"stored target {path!r} does not match its signed hash")
    return data


def publish_variant(
    services: FleetServices,
    session: Session,
    *,
    actor: str,
    name: str,
    version: int,
    kind: str = "optimized",
    tolerance: float = 1e-2,
    quantize: bool = True,
    force: bool = False,
) -> ModelVersion:
    """Build the optimized variant of a registered base version as a new version."""
    if kind not in VARIANT_KINDS:
        raise InvalidRequestError(f"kind must be one of {', '.join(VARIANT_KINDS)}")
    base = get_version(session, name, version)
    if base.deprecated:
        raise ConflictError(f"{name}:{version} is deprecated")
    if base.variant != "base":
        raise InvalidRequestError(
            f"{name}:{version} is itself a variant of version {base.base_version}; "
            "build variants from a base version"
        )
    onnx_bytes = _stored_target(services, protocol.model_target_path(name, version), base.sha256)
    package = protocol.ModelPackage.from_bytes(_stored_target(services, base.package_target))
    cand = _variant_candidate(
        onnx_bytes,
        selftest=package.selftest,
        inputs=package.inputs,
        profile=package.profile,
        framework=dict(base.framework),
        base_lineage=dict(base.lineage),
        base_sha256=base.sha256,
        tolerance=tolerance,
        quantize=quantize,
        force=force,
    )
    return _register(services, session, [cand], name=name, actor=actor, base_version=version)[0]


# -- reading -------------------------------------------------------------------------------


def get_version(session: Session, name: str, version: int) -> ModelVersion:
    row = session.scalar(
        select(ModelVersion).where(ModelVersion.name == name, ModelVersion.version == version)
    )
    if row is None:
        raise NotFoundError(f"model {name!r} has no version {version}")
    return row


def variants_of(session: Session, name: str) -> dict[int, list[int]]:
    """base version -> versions built from it."""
    out: dict[int, list[int]] = {}
    for v, b in session.execute(
        select(ModelVersion.version, ModelVersion.base_version)
        .where(ModelVersion.name == name, ModelVersion.base_version.is_not(None))
        .order_by(ModelVersion.version)
    ):
        if b is not None:
            out.setdefault(b, []).append(v)
    return out


def check_tag(tag: str) -> str:
    if not TAG_RE.fullmatch(tag):
        raise InvalidRequestError(f"invalid tag {tag!r}: use [a-z0-9_.:-], at most 40")
    return tag


def check_stage(stage: str) -> str:
    if stage not in STAGES:
        raise InvalidRequestError(f"unknown stage {stage!r}; one of {', '.join(STAGES)}")
    return stage


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _matches(tags: list[Any], stage: str, deprecated: bool, filters: dict[str, Any]) -> bool:
    if filters.get("tag") is not None and filters["tag"] not in tags:
        return False
    if filters.get("stage") is not None and stage != filters["stage"]:
        return False
    return filters.get("deprecated") is None or deprecated == filters["deprecated"]


def list_versions(
    session: Session,
    name: str,
    *,
    tag: str | None = None,
    stage: str | None = None,
    deprecated: bool | None = None,
) -> list[ModelVersion]:
    query = select(ModelVersion).where(ModelVersion.name == name)
    if stage is not None:
        query = query.where(ModelVersion.stage == check_stage(stage))
    if deprecated is not None:
        query = query.where(ModelVersion.deprecated.is_(deprecated))
    if tag is not None:
        # Portable pre-filter on the JSON text (SQLite and PostgreSQL); exact check below.
        query = query.where(cast(ModelVersion.tags, String).like(f'%"{check_tag(tag)}"%'))
    rows = session.scalars(query.order_by(ModelVersion.version)).all()
    return [r for r in rows if tag is None or tag in r.tags]


def summaries(
    session: Session,
    *,
    prefix: str | None = None,
    tag: str | None = None,
    stage: str | None = None,
    deprecated: bool | None = None,
) -> list[dict[str, Any]]:
    """One summary per model name; with filters, only names with a matching version, and
    ``matching_versions`` lists those versions. Reads only the small columns."""
    filters = {
        "tag": check_tag(tag) if tag is not None else None,
        "stage": check_stage(stage) if stage is not None else None,
        "deprecated": deprecated,
    }
    query = select(
        ModelVersion.name,
        ModelVersion.version,
        ModelVersion.stage,
        ModelVersion.tags,
        ModelVersion.deprecated,
        ModelVersion.created_at,
    )
    if prefix:
        query = query.where(ModelVersion.name.like(_escape_like(prefix) + "%", escape="\\"))
    by_name: dict[str, dict[str, Any]] = {}
    for name, version, st, tags, dep, created in session.execute(
        query.order_by(ModelVersion.name, ModelVersion.version)
    ):
        s = by_name.setdefault(
            name,
            {
                "name": name,
                "latest_version": 0,
                "versions": 0,
                "updated_at": created,
                "production_version": None,
                "staging_versions": [],
                "deprecated_versions": [],
                "tags": set(),
                "matching_versions": [],
            },
        )
        s["latest_version"] = max(s["latest_version"], version)
        s["versions"] += 1
        s["updated_at"] = max(s["updated_at"], created)
        s["tags"].update(tags)
        if st == "production":
            s["production_version"] = version
        elif st == "staging":
            s["staging_versions"].append(version)
        if dep:
            s["deprecated_versions"].append(version)
        if _matches(tags, st, dep, filters):
            s["matching_versions"].append(version)
    filtered = any(v is not None for v in filters.values())
    out = []
    for s in by_name.values():
        if filtered and not s["matching_versions"]:
            continue
        s["tags"] = sorted(s["tags"])
        out.append(s)
    return out


# -- changing what may change ------------------------------------------------------------


def set_stage(session: Session, row: ModelVersion, stage: str) -> list[int]:
    """Move ``row`` to ``stage``; returns the versions archived to make room (production)."""
    check_stage(stage)
    if row.deprecated and stage in ("staging", "production"):
        raise ConflictError(f"{row.name}:{row.version} is deprecated and cannot be {stage}")
    archived: list[int] = []
    if stage == "production":
        others = session.scalars(
            select(ModelVersion).where(
                ModelVersion.name == row.name,
                ModelVersion.stage == "production",
                ModelVersion.id != row.id,
            )
        ).all()
        for other in others:
            other.stage = "archived"
            archived.append(other.version)
        session.flush()  # archive first: the partial unique index allows one production
    row.stage = stage
    try:
        session.flush()
    except IntegrityError as e:  # a concurrent promotion on another replica won
        session.rollback()
        raise ConflictError(f"{row.name} got another production version meanwhile") from e
    return archived


def set_tags(row: ModelVersion, tags: list[str]) -> list[str]:
    clean = sorted({check_tag(t) for t in tags})
    if len(clean) > MAX_TAGS:
        raise InvalidRequestError(f"at most {MAX_TAGS} tags per version")
    row.tags = clean
    return clean


def change_tags(row: ModelVersion, add: list[str], remove: list[str]) -> list[str]:
    for t in remove:
        check_tag(t)
    return set_tags(row, [t for t in row.tags if t not in set(remove)] + list(add))


def deprecate(row: ModelVersion, reason: str) -> bool:
    """Mark ``row`` deprecated (one way); staged versions are archived. False if it was
    deprecated already (nothing changes)."""
    if row.deprecated:
        return False
    row.deprecated = True
    row.deprecated_reason = reason
    row.deprecated_at = utcnow()
    if row.stage in ("staging", "production"):
        row.stage = "archived"
    return True
