"""Drift of a model's live inputs and outputs against its signed reference profile.

Inputs are the agents' data summaries (layout in ``edge_agent.summaries``; this module
reads them without importing the agent). Per feature, on the reference bins:

- PSI with epsilon smoothing (the reference and live shares are clipped at ``psi_epsilon``);
- normalised Wasserstein (``scipy.stats.wasserstein_distance`` over bin centres weighted by
  counts, divided by the reference standard deviation over the same centres; numeric only;
  the open outer bins sit half an inner bin beyond the outer edges, so shifts far beyond
  the reference range are under-measured: PSI catches those);
- Jensen-Shannon distance (``scipy.spatial.distance.jensenshannon``, base 2, in [0, 1]);
- chi-square: ``chi2_contingency`` of reference counts against live counts when the profile
  holds counts, else ``chisquare`` against the smoothed reference shares.

Level: the feature's method metric (PSI by default; Evidently's 0.1 is the warn line) at or
above ``warn``/``alert``, and only when the chi-square p-value is below ``chi2_alpha``, so a
small window's sampling noise does not page anyone. Bins a device folded together for
k-anonymity (``null`` cells) are folded the same way in the reference before comparing.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
from scipy.spatial.distance import jensenshannon
from scipy.stats import chi2_contingency, chisquare, wasserstein_distance

SUMMARY_SCHEMA = 1
Level = Literal["ok", "warn", "alert"]
_LEVELS: dict[str, int] = {"ok": 0, "warn": 1, "alert": 2}


class SummaryError(ValueError):
    """A data summary from a device is malformed or was made against another profile."""


@dataclass(frozen=True)
class DriftThresholds:
    psi_warn: float = 0.1
    psi_alert: float = 0.25
    wasserstein_warn: float = 0.1
    wasserstein_alert: float = 0.2
    js_warn: float = 0.1
    js_alert: float = 0.2
    chi2_alpha: float = 0.01  # significance needed before any level is raised
    psi_epsilon: float = 1e-4
    numeric_method: Literal["psi", "wasserstein", "js"] = "psi"
    categorical_method: Literal["psi", "js"] = "psi"

    def level(self, method: str, value: float | None, p_value: float) -> Level:
        if value is None or not math.isfinite(p_value) or p_value >= self.chi2_alpha:
            return "ok"
        warn, alert = {
            "psi": (self.psi_warn, self.psi_alert),
            "wasserstein": (self.wasserstein_warn, self.wasserstein_alert),
            "js": (self.js_warn, self.js_alert),
        }[method]
        return "alert" if value >= alert else "warn" if value >= warn else "ok"


@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    kind: str  # "numeric" | "categorical" | "prediction" | "score"
    rows: int  # live rows binned for this feature
    psi: float
    js: float
    wasserstein: float | None
    chi2: float
    p_value: float
    method: str
    level: Level
    null_share: float = 0.0  # live share of nulls and non-finite values
    reference_null_share: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def profile_digest(profile: dict[str, Any]) -> str:
    """Same digest as ``edge_agent.summaries.profile_digest`` (canonical JSON, sha256)."""
    canonical = json.dumps(profile, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canonical).hexdigest()[:16]


# -- one feature ----------------------------------------------------------------------------
def feature_drift(
    reference: dict[str, Any],
    counts: dict[str, Any],
    *,
    thresholds: DriftThresholds | None = None,
) -> dict[str, Any]:
    """Drift metrics of one feature.

    ``reference``: a profile entry: ``kind`` ("numeric" or "categorical"), ``edges`` or
    ``vocabulary``, and optionally ``reference_counts`` / ``counts`` (numeric: one per bin;
    categorical: one per vocabulary entry plus out-of-vocabulary). Without counts, numeric
    bins are equally likely (deciles by construction). ``counts``: ``{"counts": [...]}`` in
    the same layout, ``null`` where a device folded a cell (into its left neighbour for
    numeric bins, into out-of-vocabulary for categories).
    Returns rows, psi, js, wasserstein (None for categorical), chi2 and p_value.
    """
    t = thresholds or DriftThresholds()
    kind = reference.get("kind")
    if kind not in ("numeric", "categorical"):
        raise SummaryError(f"unknown feature kind {kind!r}")
    size = (
        len(reference.get("edges") or []) + 1
        if kind == "numeric"
        else len(reference.get("vocabulary") or []) + 1
    )
    live = _cells(counts.get("counts"), size)
    ref_counts = reference.get("reference_counts", reference.get("counts"))
    ref: np.ndarray | None = None
    if isinstance(ref_counts, list) and len(ref_counts) == size:
        ref = np.asarray([float(c) for c in ref_counts])
    elif kind == "categorical":
        raise SummaryError("a categorical reference needs counts")
    numeric = kind == "numeric"
    groups = _groups(live, numeric)
    obs = np.array([sum(int(live[i] or 0) for i in g) for g in groups], dtype=np.float64)
    shares = ref if ref is not None else np.full(size, 1.0 / size)
    exp = np.array([sum(shares[i] for i in g) for g in groups], dtype=np.float64)
    n = int(obs.sum())
    out: dict[str, Any] = {"rows": n, "psi": 0.0, "js": 0.0, "chi2": 0.0, "p_value": 1.0}
    out["wasserstein"] = None
    if n == 0 or exp.sum() <= 0:
        return out
    p_live, p_ref = obs / n, exp / exp.sum()
    a, e = np.clip(p_live, t.psi_epsilon, None), np.clip(p_ref, t.psi_epsilon, None)
    out["psi"] = float(np.sum((a - e) * np.log(a / e)))
    out["js"] = float(jensenshannon(p_live, p_ref, base=2))
    out["chi2"], out["p_value"] = _chi2(obs, exp if ref is not None else None, p_ref)
    if numeric:
        centres = _centres([float(x) for x in reference.get("edges") or []])
        gc = np.array([float(np.mean(centres[g])) for g in groups])
        spread = _weighted_std(centres, shares)
        if len(gc) > 1 and p_ref.sum() > 0:
            wd = wasserstein_distance(gc, gc, u_weights=p_live, v_weights=p_ref)
            out["wasserstein"] = float(wd / spread)
        else:
            out["wasserstein"] = 0.0
    return out


def _cells(raw: Any, size: int) -> list[int | None]:
    # Guards against malformed device input: wrong length, negative or non-integer counts.
    if not isinstance(raw, list) or len(raw) != size:
        raise SummaryError(f"expected {size} cells, got {raw!r:.80}")
    cells: list[int | None] = []
    for c in raw:
        if c is None:
            cells.append(None)
        elif isinstance(c, int) and not isinstance(c, bool) and c >= 0:
            cells.append(c)
        else:
            raise SummaryError(f"bad count {c!r:.40}")
    if cells and cells[0] is None and size > 0:
        raise SummaryError("the first bin cannot be folded")
    return cells


def _groups(cells: list[int | None], numeric: bool) -> list[list[int]]:
    """Cell indices per compared group: numeric ``null`` joins the group on its left,
    a categorical ``null`` joins out-of-vocabulary (the last cell)."""
    if numeric:
        groups: list[list[int]] = []
        for i, c in enumerate(cells):
            if c is None:
                groups[-1].append(i)
            else:
                groups.append([i])
        return groups
    last = len(cells) - 1
    folded = [i for i, c in enumerate(cells[:-1]) if c is None]
    return [[i] for i, c in enumerate(cells[:-1]) if c is not None] + [[*folded, last]]


def _chi2(obs: np.ndarray, ref: np.ndarray | None, p_ref: np.ndarray) -> tuple[float, float]:
    if ref is not None:
        table = np.vstack([ref, obs])
        keep = table.sum(axis=0) > 0
        if keep.sum() < 2:
            return 0.0, 1.0
        res = chi2_contingency(table[:, keep], correction=False)
        return float(res.statistic), float(res.pvalue)
    p = np.clip(p_ref, 1e-4, None)
    res = chisquare(obs, p / p.sum() * obs.sum())
    return float(res.statistic), float(res.pvalue)


def _centres(edges: list[float]) -> np.ndarray:
    if not edges:
        return np.zeros(1)
    if len(edges) == 1:
        w = max(abs(edges[0]) * 0.1, 1.0)
        return np.array([edges[0] - w / 2, edges[0] + w / 2])
    e = np.asarray(edges)
    inner = (e[:-1] + e[1:]) / 2
    return np.concatenate([[e[0] - (e[1] - e[0]) / 2], inner, [e[-1] + (e[-1] - e[-2]) / 2]])


def _weighted_std(x: np.ndarray, w: np.ndarray) -> float:
    w = np.asarray(w, dtype=np.float64)
    if w.sum() <= 0:
        return 1.0
    mean = float(np.average(x, weights=w))
    std = math.sqrt(float(np.average((x - mean) ** 2, weights=w)))
    return std if std > 0 else 1.0


# -- a whole summary ------------------------------------------------------------------------
def evaluate(
    profile: dict[str, Any],
    merged_summary: dict[str, Any],
    *,
    min_rows: int = 1000,
    thresholds: DriftThresholds | None = None,
) -> list[FeatureDrift]:
    """Drift per feature (and of the prediction mix and score), or [] while the summary
    holds fewer than ``min_rows`` rows."""
    t = thresholds or DriftThresholds()
    summary = _validated(merged_summary, profile)
    if summary["rows"] < min_rows:
        return []
    results: list[FeatureDrift] = []
    ref_rows = profile.get("rows")
    ref_rows = ref_rows if isinstance(ref_rows, int) and ref_rows > 0 else 0
    for f, entry in zip(profile.get("features") or [], summary["features"], strict=True):
        kind = f["kind"]
        if kind == "numeric":
            cells, missing = entry[0], sum(int(x) for x in entry[3:5])
            ref_missing = int(f.get("nulls") or 0)
        else:
            oov = int(entry[1]) if len(entry) > 1 else 0
            cells, missing, ref_missing = [*entry[0], oov], sum(int(x) for x in entry[2:3]), 0
        m = feature_drift(f, {"counts": cells}, thresholds=t)
        results.append(
            _result(
                str(f.get("name")),
                kind,
                m,
                t,
                t.numeric_method if kind == "numeric" else t.categorical_method,
                null_share=missing / max(m["rows"] + missing, 1),
                reference_null_share=ref_missing / ref_rows if ref_rows else 0.0,
            )
        )
    classes, mix, score = _outputs(profile)
    if "pred" in summary and mix is not None:
        total = float(ref_rows) if ref_rows else 1.0
        ref = {
            "kind": "categorical",
            "vocabulary": list(classes),
            "counts": [mix.get(c, 0.0) * total for c in classes] + [0.0],
        }
        m = feature_drift(ref, {"counts": summary["pred"]}, thresholds=t)
        results.append(_result("prediction", "prediction", m, t, t.categorical_method))
    if "score" in summary and score is not None:
        m = feature_drift(score, {"counts": summary["score"]}, thresholds=t)
        results.append(_result("score", "score", m, t, t.numeric_method))
    return results


def _result(
    name: str,
    kind: str,
    m: dict[str, Any],
    t: DriftThresholds,
    method: str,
    *,
    null_share: float = 0.0,
    reference_null_share: float = 0.0,
) -> FeatureDrift:
    if method == "wasserstein" and m["wasserstein"] is None:
        method = "psi"
    return FeatureDrift(
        feature=name,
        kind=kind,
        rows=m["rows"],
        psi=m["psi"],
        js=m["js"],
        wasserstein=m["wasserstein"],
        chi2=m["chi2"],
        p_value=m["p_value"],
        method=method,
        level=t.level(method, m[method], m["p_value"]),
        null_share=round(null_share, 6),
        reference_null_share=round(reference_null_share, 6),
    )


def _outputs(
    profile: dict[str, Any],
) -> tuple[list[str], dict[str, float] | None, dict[str, Any] | None]:
    """(classes, reference class mix, score reference) from either profile spelling."""
    out = profile.get("outputs")
    if isinstance(out, dict):
        classes = [str(c) for c in out.get("classes") or []]
        counts = out.get("class_counts")
        mix = (
            {c: float(x) for c, x in zip(classes, counts, strict=True)}
            if isinstance(counts, list) and len(counts) == len(classes)
            else None
        )
        edges = out.get("score_edges")
        score = None
        if isinstance(edges, list) and isinstance(out.get("score_counts"), list):
            score = {"kind": "numeric", "edges": edges, "counts": out["score_counts"]}
        return classes, mix, score
    cls = profile.get("classes") if isinstance(profile.get("classes"), dict) else None
    mix = {str(k): float(v) for k, v in (cls.get("mix") or {}).items()} if cls else None
    sc = profile.get("score") if isinstance(profile.get("score"), dict) else None
    score = (
        {"kind": "numeric", "edges": sc.get("edges") or [], "counts": sc.get("counts")}
        if sc and isinstance(sc.get("counts"), list)
        else None
    )
    return sorted(mix) if mix else [], mix, score


# -- summaries ------------------------------------------------------------------------------
def _validated(summary: dict[str, Any], profile: dict[str, Any] | None = None) -> dict[str, Any]:
    # Guards against device input that would crash or mislead the evaluation.
    if not isinstance(summary, dict) or summary.get("schema") != SUMMARY_SCHEMA:
        raise SummaryError("not a data summary of a known schema")
    rows = summary.get("rows")
    if not isinstance(rows, int) or isinstance(rows, bool) or rows < 0:
        raise SummaryError("summary rows missing or negative")
    features = summary.get("features")
    if not isinstance(features, list):
        raise SummaryError("summary features missing")
    if profile is not None:
        # Guards against comparing counts made on one profile's bins with another's.
        if summary.get("profile") != profile_digest(profile):
            raise SummaryError("summary was made against another profile")
        if len(features) != len(profile.get("features") or []):
            raise SummaryError("summary and profile disagree on the number of features")
        for f, entry in zip(profile.get("features") or [], features, strict=True):
            if _entry_kind(entry) != f.get("kind"):
                raise SummaryError(f"feature {f.get('name')!r}: entry does not match its kind")
    return summary


def _entry_kind(entry: Any) -> str:
    """numeric: [bins, mean|null, std|null, nulls?, nonfinite?] (moments always present);
    categorical: [counts, oov?, nulls?] (integers only)."""
    if not isinstance(entry, list) or not entry or not isinstance(entry[0], list):
        raise SummaryError("bad feature entry")
    if len(entry) >= 3 and all(x is None or isinstance(x, float) for x in entry[1:3]):
        if len(entry) > 5 or not all(_count(x) for x in entry[3:]):
            raise SummaryError("bad numeric feature entry")
        return "numeric"
    if len(entry) > 3 or not all(_count(x) for x in entry[1:]):
        raise SummaryError("bad categorical feature entry")
    return "categorical"


def _count(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def merge_summaries(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """Add summaries made against one profile (windows of one device, or several devices)."""
    if not summaries:
        raise SummaryError("nothing to merge")
    for s in summaries:
        _validated(s)
    first = summaries[0]
    if any(s.get("profile") != first.get("profile") for s in summaries):
        raise SummaryError("summaries of different profiles cannot be merged")
    if any(len(s["features"]) != len(first["features"]) for s in summaries):
        raise SummaryError("summaries disagree on the number of features")
    merged: dict[str, Any] = {
        "schema": SUMMARY_SCHEMA,
        "profile": first.get("profile"),
        "start": min(int(s.get("start", 0)) for s in summaries),
        "end": max(int(s.get("end", 0)) for s in summaries),
        "windows": sum(int(s.get("windows", 1)) for s in summaries),
        "rows": sum(int(s["rows"]) for s in summaries),
        "k": max(int(s.get("k", 1)) for s in summaries),
        "summaries": sum(int(s.get("summaries", 1)) for s in summaries),
    }
    features: list[Any] = []
    for j in range(len(first["features"])):
        entries = [s["features"][j] for s in summaries]
        features.append(_merge_entry(entries))
    merged["features"] = features
    if all("pred" in s for s in summaries):
        cells = [_cells_any(s["pred"]) for s in summaries]
        merged["pred"] = _merge_categorical([c[:-1] for c in cells], [c[-1] or 0 for c in cells])
    if all("score" in s for s in summaries):
        merged["score"] = _merge_bins([_cells_any(s["score"]) for s in summaries])
    if all("conf" in s for s in summaries):
        conf = np.sum([[float(x) for x in s["conf"][:3]] for s in summaries], axis=0)
        merged["conf"] = [int(conf[0]), float(conf[1]), float(conf[2])]
    labels: dict[tuple[int, int], int] = {}
    for s in summaries:
        for cell in s.get("labels") or []:
            if not (
                isinstance(cell, list) and len(cell) == 3 and all(isinstance(x, int) for x in cell)
            ):
                raise SummaryError("bad confusion cell")
            labels[(cell[0], cell[1])] = labels.get((cell[0], cell[1]), 0) + cell[2]
    if labels:
        merged["labels"] = [[t, p, c] for (t, p), c in sorted(labels.items())]
    eps = [float(s["dp"]["epsilon"]) for s in summaries if isinstance(s.get("dp"), dict)]
    if eps:
        # Disjoint rows (other windows, other devices): parallel composition, the max.
        merged["dp"] = {"mechanism": "geometric", "epsilon": max(eps), "noised": len(eps)}
    return merged


def _cells_any(raw: Any) -> list[int | None]:
    if not isinstance(raw, list):
        raise SummaryError("expected a list of counts")
    return _cells(raw, len(raw))


def _merge_entry(entries: list[Any]) -> list[Any]:
    kinds = {_entry_kind(e) for e in entries}
    if len(kinds) != 1:
        raise SummaryError("feature entries disagree on their kind")
    if any(len(e[0]) != len(entries[0][0]) for e in entries):
        raise SummaryError("feature entries disagree on their number of cells")
    if kinds == {"numeric"}:
        bins = _merge_bins([_cells_any(e[0]) for e in entries])
        moments: list[Any] = [None, None]
        if all(e[1] is not None and e[2] is not None for e in entries):
            moments = _merge_moments(
                [(sum(int(c or 0) for c in e[0]), e[1], e[2]) for e in entries]
            )
        nulls = sum(int(e[3]) for e in entries if len(e) > 3)
        nonfinite = sum(int(e[4]) for e in entries if len(e) > 4)
        return [bins, *moments, *_trim([nulls, nonfinite], keep=0)]
    counts = _merge_categorical(
        [_cells_any(e[0]) for e in entries], [int(e[1]) if len(e) > 1 else 0 for e in entries]
    )
    nulls = sum(int(e[2]) if len(e) > 2 else 0 for e in entries)
    return [counts[:-1], *_trim([counts[-1], nulls], keep=0)]


def _merge_moments(parts: list[tuple[int, float, float]]) -> list[float | None]:
    """Mean and population std of the union (Chan et al.: no sumsq - mean**2 cancellation)."""
    n = sum(p[0] for p in parts)
    if n == 0:
        return [None, None]
    mean = sum(k * m for k, m, _ in parts) / n
    var = sum(k * (sd * sd + (m - mean) ** 2) for k, m, sd in parts) / n
    return [float(mean), math.sqrt(var)]


def _merge_bins(cells: list[list[int | None]]) -> list[int | None]:
    """Coarsest common grouping: a bin starts a group only where it does in every input."""
    size = len(cells[0])
    if any(len(c) != size for c in cells):
        raise SummaryError("histograms disagree on their number of bins")
    starts = [i for i in range(size) if all(c[i] is not None for c in cells)]
    out: list[int | None] = [None] * size
    for a, b in zip(starts, [*starts[1:], size], strict=True):
        out[a] = sum(int(c[i] or 0) for c in cells for i in range(a, b))
    return out


def _merge_categorical(cells: list[list[int | None]], others: Iterable[int]) -> list[int | None]:
    """Cells (without "other") plus "other" last; a cell folded anywhere is folded here."""
    size = len(cells[0])
    if any(len(c) != size for c in cells):
        raise SummaryError("category counts disagree on their length")
    other = sum(int(o) for o in others)
    out: list[int | None] = []
    for i in range(size):
        if any(c[i] is None for c in cells):
            other += sum(int(c[i] or 0) for c in cells)
            out.append(None)
        else:
            out.append(sum(int(c[i] or 0) for c in cells))
    return [*out, other]


def _trim(entry: list[Any], keep: int = 1) -> list[Any]:
    while len(entry) > keep and entry[-1] == 0:
        entry.pop()
    return entry


# -- alerts ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class DriftEvent:
    """What the tracker asks the server to do; map to ``alerting.raise_alert``/``resolve``.

    kind: "drift" (open or refresh the device's alert), "drift_resolved",
    "cohort_drift" (open or refresh the group's incident), "cohort_resolved".
    """

    kind: str
    device: str | None
    group: str | None
    severity: str  # "warning" | "critical"
    message: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class _DeviceState:
    group: str | None = None
    streaks: dict[str, int] = field(default_factory=dict)
    levels: dict[str, str] = field(default_factory=dict)
    alerting: dict[str, str] = field(default_factory=dict)  # feature -> level when raised


class AlertTracker:
    """Turns per-evaluation drift levels into alerts.

    A feature breaches when its level is at least ``breach_level``; after ``consecutive``
    breaching evaluations in a row the device's drift alert opens (severity critical when
    the latest level is "alert"). One evaluation below the line clears that feature. A
    group's cohort incident opens when at least ``cohort_min_devices`` devices and
    ``cohort_fraction`` of the group's known devices are alerting at once. State is in
    memory (``to_json``/``from_json`` to keep it in the database between runs).
    """

    def __init__(
        self,
        *,
        consecutive: int = 3,
        breach_level: Level = "warn",
        cohort_fraction: float = 0.3,
        cohort_min_devices: int = 3,
    ) -> None:
        if consecutive < 1 or not 0 < cohort_fraction <= 1 or cohort_min_devices < 1:
            raise RuntimeError("bad alert tracker settings")
        self.consecutive = consecutive
        self.breach_level = breach_level
        self.cohort_fraction = cohort_fraction
        self.cohort_min_devices = cohort_min_devices
        self._devices: dict[str, _DeviceState] = {}
        self._cohorts: dict[str, list[str]] = {}  # group -> drifting devices when raised

    def update(
        self, device: str, results: list[FeatureDrift], *, group: str | None = None
    ) -> list[DriftEvent]:
        """Feed one evaluation of one device; returns the alerts to raise or resolve."""
        st = self._devices.setdefault(device, _DeviceState())
        old_group = st.group
        st.group = group if group is not None else st.group
        before = dict(st.alerting)
        line = _LEVELS[self.breach_level]
        for r in results:
            if _LEVELS[r.level] >= line:
                st.streaks[r.feature] = st.streaks.get(r.feature, 0) + 1
            else:
                st.streaks[r.feature] = 0
            st.levels[r.feature] = r.level
            if st.streaks[r.feature] >= self.consecutive:
                st.alerting[r.feature] = r.level
            else:
                st.alerting.pop(r.feature, None)
        events: list[DriftEvent] = []
        if st.alerting and st.alerting != before:
            severe = any(v == "alert" for v in st.alerting.values())
            events.append(
                DriftEvent(
                    "drift",
                    device,
                    st.group,
                    "critical" if severe else "warning",
                    f"{device}: drift in {', '.join(sorted(st.alerting))}",
                    {"features": dict(sorted(st.alerting.items()))},
                )
            )
        elif before and not st.alerting:
            events.append(
                DriftEvent("drift_resolved", device, st.group, "warning", f"{device}: no drift")
            )
        for g in {old_group, st.group} - {None}:
            assert g is not None
            events.extend(self._cohort(g))
        return events

    def _cohort(self, group: str) -> list[DriftEvent]:
        members = [d for d, s in self._devices.items() if s.group == group]
        drifting = sorted(d for d in members if self._devices[d].alerting)
        hit = len(drifting) >= self.cohort_min_devices and len(
            drifting
        ) >= self.cohort_fraction * len(members)
        if hit:
            features: dict[str, int] = {}
            for d in drifting:
                for f in self._devices[d].alerting:
                    features[f] = features.get(f, 0) + 1
            if self._cohorts.get(group) == drifting:
                return []  # open already, same devices
            self._cohorts[group] = drifting
            return [
                DriftEvent(
                    "cohort_drift",
                    None,
                    group,
                    "critical",
                    f"group {group}: {len(drifting)} of {len(members)} devices drift",
                    {"devices": drifting, "members": len(members), "features": features},
                )
            ]
        if group in self._cohorts:
            del self._cohorts[group]
            return [
                DriftEvent("cohort_resolved", None, group, "warning", f"group {group}: recovered")
            ]
        return []

    def alerting(self, device: str) -> dict[str, str]:
        st = self._devices.get(device)
        return dict(st.alerting) if st else {}

    def to_json(self) -> dict[str, Any]:
        return {
            "devices": {d: asdict(s) for d, s in self._devices.items()},
            "cohorts": dict(sorted(self._cohorts.items())),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], **settings: Any) -> AlertTracker:
        tracker = cls(**settings)
        for d, s in (data.get("devices") or {}).items():
            tracker._devices[str(d)] = _DeviceState(
                group=s.get("group"),
                streaks={str(k): int(v) for k, v in (s.get("streaks") or {}).items()},
                levels={str(k): str(v) for k, v in (s.get("levels") or {}).items()},
                alerting={str(k): str(v) for k, v in (s.get("alerting") or {}).items()},
            )
        tracker._cohorts = {
            str(g): [str(d) for d in ds] for g, ds in (data.get("cohorts") or {}).items()
        }
        return tracker
