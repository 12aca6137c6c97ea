"""Drift monitoring: device summaries against the signed reference profile, and alerts.

Summaries arrive as telemetry records (kind ``summary``; body made by
``edge_agent.summaries`` plus ``model`` and ``version``). A background pass merges each
device's new windows per model version until they hold ``min_rows`` rows, evaluates them
with ``fleet_server.drift`` (scipy statistics) and feeds ``AlertTracker``, which raises an
alert after consecutive breaches and a cohort incident when many devices of a group drift.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fleet_server.alerting import raise_alert, resolve_alerts
from fleet_server.drift import (
    AlertTracker,
    DriftEvent,
    FeatureDrift,
    SummaryError,
    evaluate,
    merge_summaries,
)
from fleet_server.tables import Device, ModelVersion, Telemetry, utcnow

log = logging.getLogger(__name__)

Key = tuple[str, str, int]  # device, model, version


def _model_key(body: dict[str, Any]) -> tuple[str, int] | None:
    model, version = body.get("model"), body.get("version")
    if isinstance(model, str) and isinstance(version, int) and not isinstance(version, bool):
        return model, version
    return None


class ProfileCache:
    def __init__(self) -> None:
        self._profiles: dict[tuple[str, int], dict[str, Any]] = {}

    def get(self, session: Session, model: str, version: int) -> dict[str, Any] | None:
        key = (model, version)
        if key not in self._profiles:
            profile = session.scalar(
                select(ModelVersion.profile).where(
                    ModelVersion.name == model, ModelVersion.version == version
                )
            )
            if not profile:
                return None
            self._profiles[key] = profile
        return self._profiles[key]


def recent_summaries(
    session: Session, device_id: str, model: str, version: int, since: datetime, limit: int
) -> list[dict[str, Any]]:
    rows = session.scalars(
        select(Telemetry.body)
        .where(Telemetry.device_id == device_id, Telemetry.kind == "summary", Telemetry.ts >= since)
        .order_by(Telemetry.seq.desc())
        .limit(limit)
    )
    return [b for b in rows if _model_key(b) == (model, version)]


def drift_for(
    session: Session,
    profiles: ProfileCache,
    device_id: str,
    model: str,
    version: int,
    *,
    since: datetime,
    min_rows: int,
    limit: int = 1000,
) -> dict[str, Any]:
    """Per-feature drift of one device's recent windows of one model version."""
    out: dict[str, Any] = {
        "model": model,
        "version": version,
        "rows": 0,
        "evaluated": False,
        "features": [],
    }
    profile = profiles.get(session, model, version)
    summaries = recent_summaries(session, device_id, model, version, since, limit)
    if profile is None or not profile.get("features") or not summaries:
        out["reason"] = "no reference profile" if not profile else "no summaries yet"
        return out
    try:
        merged = merge_summaries(summaries)
        results = evaluate(profile, merged, min_rows=min_rows)
    except SummaryError as e:
        out["reason"] = str(e)
        return out
    out["rows"] = merged["rows"]
    out["evaluated"] = bool(results)
    if not results:
        out["reason"] = f"fewer than {min_rows} rows"
    out["features"] = [r.to_dict() for r in results]
    if "labels" in merged:
        out["accuracy"] = accuracy(merged["labels"])
    return out


def accuracy(labels: list[list[int]]) -> dict[str, Any]:
    total = sum(c for _, _, c in labels)
    right = sum(c for t, p, c in labels if t == p)
    return {"labelled": total, "accuracy": right / total if total else None}


class DriftMonitor:
    def __init__(self, *, min_rows: int, consecutive: int) -> None:
        self.min_rows = min_rows
        self.tracker = AlertTracker(consecutive=consecutive)
        self.profiles = ProfileCache()
        self._cursor: int | None = None
        self._pending: dict[Key, list[dict[str, Any]]] = defaultdict(list)
        self._lock = threading.Lock()

    def run_once(self, session: Session, batch: int = 5000) -> list[tuple[Key, list[FeatureDrift]]]:
        """Consume new summaries; evaluate the windows that hold enough rows."""
        with self._lock:
            if self._cursor is None:  # first pass: only what arrives from now on
                self._cursor = session.scalar(select(func.max(Telemetry.id))) or 0
            rows = session.execute(
                select(Telemetry.id, Telemetry.device_id, Telemetry.body)
                .where(Telemetry.id > self._cursor, Telemetry.kind == "summary")
                .order_by(Telemetry.id)
                .limit(batch)
            ).all()
            for row_id, device_id, body in rows:
                self._cursor = row_id
                mk = _model_key(body)
                if mk is not None:
                    self._pending[(device_id, mk[0], mk[1])].append(body)
            evaluated = []
            groups = {d: g for d, g in session.execute(select(Device.id, Device.group))}
            for key, bodies in list(self._pending.items()):
                results = self._evaluate(session, key, bodies)
                if results is None:
                    continue
                del self._pending[key]
                evaluated.append((key, results))
                for event in self.tracker.update(key[0], results, group=groups.get(key[0])):
                    self._apply(session, key, event)
            return evaluated

    def _evaluate(
        self, session: Session, key: Key, bodies: list[dict[str, Any]]
    ) -> list[FeatureDrift] | None:
        device_id, model, version = key
        profile = self.profiles.get(session, model, version)
        if profile is None or not profile.get("features"):
            self._pending.pop(key, None)
            return None
        try:
            merged = merge_summaries(bodies)
            results = evaluate(profile, merged, min_rows=self.min_rows)
        except SummaryError as e:
            log.warning("summaries of %s for %s:%s dropped: %s", device_id, model, version, e)
            self._pending.pop(key, None)
            return None
        return results or None  # None: hold and merge with the next windows

    def _apply(self, session: Session, key: Key, event: DriftEvent) -> None:
        detail = {**event.detail, "model": key[1], "version": key[2]}
        if event.kind == "drift":
            raise_alert(
                session,
                "drift",
                event.message,
                device_id=event.device,
                severity=event.severity,
                detail=detail,
            )
        elif event.kind == "drift_resolved":
            resolve_alerts(session, "drift", event.device)
        elif event.kind == "cohort_drift":
            raise_alert(
                session,
                f"cohort_drift:{event.group}",
                event.message,
                severity=event.severity,
                detail=detail,
            )
        elif event.kind == "cohort_resolved":
            resolve_alerts(session, f"cohort_drift:{event.group}", None)


def default_since(hours: float = 24.0) -> datetime:
    return utcnow() - timedelta(hours=hours)
