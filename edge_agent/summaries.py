"""Minimized data summaries: what the agent tells the server about its inputs and outputs.

A ``WindowSummarizer`` is fed from the inference path and, once per window, returns counts
over the reference bins of the model's signed profile (see converters/profile.py). Nothing
else leaves it: no raw values, no strings; features, categories and classes are positions
in the profile. Summary body (compact JSON; the daemon adds ``model`` and ``version``)::

    {"schema": 1, "profile": <16 hex of sha256 of the canonical profile JSON>,
     "start": <unix s>, "end": <unix s>, "windows": <windows merged>, "rows": N, "k": k,
     "features": [per profile feature, in profile order:
        numeric:     [bins, mean, std, nulls, nonfinite]  (mean/std: float or null)
        categorical: [counts per vocabulary entry, oov, nulls]  (integers only)
        (trailing zero counts are left off)],
     "pred":   [counts per class..., other],      # predicted labels
     "score":  [bins over the profile's score edges],
     "conf":   [n, sum of max probability, sum of its squares],   # for CBPE-style estimates
     "labels": [[true class, predicted class, count], ...],       # confusion, sparse
     "dp":     {"mechanism": "geometric", "epsilon": e, "queries": m}}   # only with epsilon

Bins follow the profile: ``len(edges) + 1`` bins with open outer bins; bin i holds
``edges[i-1] <= v < edges[i]`` (``np.searchsorted(edges, v, side="right")``). Class and
category index ``len(classes)`` / ``len(vocabulary)`` is "other / out of vocabulary".

Small cells (k-anonymity, ``0 < count < k``):
- a histogram bin is merged with its smaller non-empty neighbour until every group holds
  0 or >= k rows (a whole histogram below k is reported as 0); the group's total sits in
  its leftmost bin and the other bins of the group are ``null`` ("folded into the bin on
  the left"), so totals are kept and the server folds the reference bins the same way;
- a category or class below k is folded into "other" (its cell becomes ``null``); if
  "other" then holds fewer than k rows it is reported as 0 (folding a large category into
  it would cost the server more than the few rows lost);
- null / non-finite counts and confusion cells below k are reported as 0;
- mean and std are sent only when at least k finite values were summed.

Mean and standard deviation (population) carry what count, sum and sum of squares carry
(n is the sum of the bins) in fewer digits (the mean to a thousandth of a std, the std to
3 significant digits) and without the cancellation of sumsq/n - mean**2; they are
accumulated around the reference median edge.
The server merges them with Chan's formula (``fleet_server.drift.merge_summaries``).
This is cell suppression, not a defence against differencing across windows or fields;
for that, set ``epsilon``.

Differential privacy (optional ``epsilon`` per window): the budget is split evenly over the
m released queries (basic composition; every row adds 1 to one cell of each histogram, so
each histogram has L1 sensitivity 1 under add/remove-one-row). Counts get two-sided
geometric noise, the bounded max-probability sums Laplace noise; feature means and
standard deviations (unbounded sensitivity) are not sent. Windows hold disjoint rows, so
per row the budget is epsilon per window (plus its confusion share if its label arrives
in a later window). Noise is drawn with numpy's
PCG64 seeded from ``secrets`` (OpenDP's 47 MB wheel is too heavy for the agent; its
floating-point-safe samplers are the upgrade path).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import secrets
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
BATCH_ROWS = 256  # rows buffered before one vectorized pass
LABEL_RING = 10_000  # recent predictions kept for late labels


def profile_digest(profile: dict[str, Any]) -> str:
    """Names the profile a summary was made against (the server checks it)."""
    canonical = json.dumps(profile, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canonical).hexdigest()[:16]


@dataclass(frozen=True)
class _Feature:
    kind: str  # "numeric" | "categorical"
    input: str
    column: int
    edges: tuple[float, ...] = ()
    vocabulary: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Outputs:
    label: str | None
    classes: tuple[str, ...]
    scores: str | None
    reduce: str  # "max" | "column"
    column: int
    score_edges: tuple[float, ...]


def _parse_profile(profile: dict[str, Any]) -> tuple[list[_Feature], _Outputs]:
    """Read both profile spellings: the converters' (index, score, classes.mix) and the
    short one (column, outputs.{label, scores, classes, score_edges})."""
    features: list[_Feature] = []
    for f in profile.get("features") or []:
        if not isinstance(f, dict):
            raise ValueError("profile feature is not an object")
        column = int(f.get("column", f.get("index")) or 0)
        inp = str(f["input"])
        if f.get("kind") == "categorical":
            vocab = tuple(str(v) for v in f.get("vocabulary") or [])
            features.append(_Feature("categorical", inp, column, vocabulary=vocab))
        elif f.get("kind") == "numeric":
            edges = tuple(float(e) for e in f.get("edges") or [])
            if any(b <= a for a, b in itertools.pairwise(edges)):
                raise ValueError(f"profile feature {f.get('name')!r}: edges not ascending")
            features.append(_Feature("numeric", inp, column, edges=edges))
        else:
            raise ValueError(f"profile feature {f.get('name')!r}: unknown kind")
    out = profile.get("outputs")
    if isinstance(out, dict):
        return features, _Outputs(
            label=out.get("label"),
            classes=tuple(str(c) for c in out.get("classes") or []),
            scores=out.get("scores"),
            reduce="max",
            column=0,
            score_edges=tuple(float(e) for e in out.get("score_edges") or []),
        )
    score = profile.get("score") if isinstance(profile.get("score"), dict) else {}
    classes = profile.get("classes") if isinstance(profile.get("classes"), dict) else {}
    assert isinstance(score, dict) and isinstance(classes, dict)
    return features, _Outputs(
        label=classes.get("output"),
        classes=tuple(sorted(str(c) for c in (classes.get("mix") or {}))),
        scores=score.get("output"),
        reduce=str(score.get("reduce") or "column"),
        column=int(score.get("column") or 0),
        score_edges=tuple(float(e) for e in score.get("edges") or []),
    )


def _rows(a: np.ndarray) -> np.ndarray:
    return a.reshape(a.shape[0], -1) if a.ndim != 1 else a.reshape(-1, 1)


class WindowSummarizer:
    """Accumulates one window of counts; ``flush`` releases it once it holds enough rows."""

    def __init__(
        self,
        profile: dict[str, Any],
        *,
        k_min: int = 5,
        min_rows: int = 100,
        epsilon: float | None = None,
        label_ring: int = LABEL_RING,
        rng: np.random.Generator | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if k_min < 1 or min_rows < 0:
            raise RuntimeError("k_min must be >= 1 and min_rows >= 0")
        if epsilon is not None and not (epsilon > 0 and math.isfinite(epsilon)):
            raise RuntimeError("epsilon must be a positive number")
        self.features, self.outputs = _parse_profile(profile)
        self.digest = profile_digest(profile)
        self.k_min, self.min_rows, self.epsilon = k_min, min_rows, epsilon
        self._rng = rng if rng is not None else np.random.default_rng(secrets.randbits(128))
        self._clock = clock
        self._lock = threading.Lock()
        # Numeric features grouped per input: one broadcast comparison bins them all.
        self._numeric = [i for i, f in enumerate(self.features) if f.kind == "numeric"]
        groups: dict[str, list[int]] = {}
        for j, i in enumerate(self._numeric):
            groups.setdefault(self.features[i].input, []).append(j)
        self._groups: list[tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        sizes = [len(self.features[i].edges) + 1 for i in self._numeric]
        self._offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self._centre = np.array(
            [_centre(self.features[i].edges) for i in self._numeric], dtype=np.float64
        )
        for inp, js in groups.items():
            width = max(sizes[j] - 1 for j in js)
            edges = np.full((len(js), max(width, 1)), np.inf)
            for r, j in enumerate(js):
                e = self.features[self._numeric[j]].edges
                edges[r, : len(e)] = e
            cols = np.array([self.features[self._numeric[j]].column for j in js], dtype=np.int64)
            self._groups.append((inp, np.array(js, dtype=np.int64), cols, edges, _as32(edges)))
        self._categorical = [i for i, f in enumerate(self.features) if f.kind == "categorical"]
        self._vocab = {
            i: {v: n for n, v in enumerate(self.features[i].vocabulary)} for i in self._categorical
        }
        self._class_index = {c: n for n, c in enumerate(self.outputs.classes)}
        self._score_edges = np.asarray(self.outputs.score_edges, dtype=np.float64)
        self._score_edges32 = _as32(self._score_edges)
        self._inputs = {f.input for f in self.features}
        self._recent: OrderedDict[str, int] = OrderedDict()
        self._ring = label_ring
        self._buffer: list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] = []
        self._buffered = 0
        self._reset()

    # -- accumulation ---------------------------------------------------------------------
    def _reset(self) -> None:
        n_num = len(self._numeric)
        self._rows_seen = 0
        self._skipped = 0
        self._windows = 1
        self._start = self._clock()
        self._bins = np.zeros(int(self._offsets[-1]), dtype=np.int64)
        self._nulls = np.zeros(n_num, dtype=np.int64)
        self._nonfinite = np.zeros(n_num, dtype=np.int64)
        self._sum = np.zeros(n_num)  # of (value - centre)
        self._sumsq = np.zeros(n_num)
        self._cat = {
            i: np.zeros(len(self.features[i].vocabulary) + 2, dtype=np.int64)
            for i in self._categorical
        }
        self._pred = np.zeros(len(self.outputs.classes) + 1, dtype=np.int64)
        self._score = np.zeros(len(self._score_edges) + 1, dtype=np.int64)
        self._conf = np.zeros(3)
        self._confusion: Counter[tuple[int, int]] = Counter()

    def observe(
        self,
        inputs: dict[str, np.ndarray],
        outputs: dict[str, np.ndarray],
        ids: Sequence[str] | None = None,
    ) -> None:
        """Count one request (one or more rows). ``ids`` (one per row) let labels arrive later.

        Cheap on the hot path: arrays are copied into a buffer and binned in batches.
        """
        kept_in = {k: np.array(v, copy=True) for k, v in inputs.items() if k in self._inputs}
        kept_out = {
            k: np.array(v, copy=True)
            for k, v in outputs.items()
            if k in (self.outputs.label, self.outputs.scores)
        }
        n = _count_rows(kept_in, kept_out)
        with self._lock:
            if ids is not None and self.outputs.label in kept_out:
                labels = _rows(kept_out[self.outputs.label])[:, 0].tolist()
                for rid, lab in zip(ids, labels, strict=False):  # serving must not fail
                    self._recent[str(rid)] = self._class_index.get(_text(lab), len(self._pred) - 1)
                    self._recent.move_to_end(str(rid))
                while len(self._recent) > self._ring:
                    self._recent.popitem(last=False)
            self._buffer.append((kept_in, kept_out))
            self._buffered += n
            if self._buffered >= BATCH_ROWS:
                self._drain()

    def _drain(self) -> None:
        batch, self._buffer, self._buffered = self._buffer, [], 0
        if not batch:
            return
        try:
            self._count_batch(batch)
        except (ValueError, TypeError, IndexError) as e:
            # Summaries must never break serving: a batch that cannot be binned (ragged
            # shapes, odd dtypes) is counted as skipped and reported.
            self._skipped += sum(_count_rows(b[0], b[1]) for b in batch)
            log.warning("data summary skipped a batch: %s", e)

    def record_label(self, inference_id: str, label: Any) -> bool:
        """Count a ground-truth label against a recent prediction; False if it is unknown."""
        with self._lock:
            pred = self._recent.pop(str(inference_id), None)
            if pred is None:
                return False
            true = self._class_index.get(_text(label), len(self.outputs.classes))
            self._confusion[(true, pred)] += 1
            return True

    def _count_batch(
        self, batch: list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]
    ) -> None:
        ins: dict[str, np.ndarray] = {}
        outs: dict[str, np.ndarray] = {}
        for key in self._inputs:
            parts = [_rows(b[0][key]) for b in batch if key in b[0]]
            if len(parts) == len(batch):  # every request carried the input
                ins[key] = np.concatenate(parts) if len(parts) > 1 else parts[0]
        for name in {self.outputs.label, self.outputs.scores}:
            if name is None:
                continue
            parts = [_rows(b[1][name]) for b in batch if name in b[1]]
            if len(parts) == len(batch):
                outs[name] = np.concatenate(parts) if len(parts) > 1 else parts[0]
        n_rows = sum(_count_rows(b[0], b[1]) for b in batch)
        self._rows_seen += n_rows
        self._count_numeric(ins, n_rows)
        self._count_categorical(ins, n_rows)
        self._count_outputs(outs)

    def _count_numeric(self, ins: dict[str, np.ndarray], n_rows: int) -> None:
        for inp, js, cols, edges64, edges32 in self._groups:
            arr = ins.get(inp)
            if arr is None or arr.shape[1] <= int(cols.max()) or arr.dtype == object:
                self._nulls[js] += n_rows  # the input is missing or not numeric
                continue
            # float32 inputs are compared with float32-rounded edges: a value that equals an
            # edge in the reference data must land in the same bin after rounding.
            edges = edges32 if arr.dtype == np.float32 else edges64
            v = arr[:, cols].astype(np.float64, copy=False)
            nan = np.isnan(v)
            finite = np.isfinite(v)
            self._nulls[js] += nan.sum(axis=0)
            self._nonfinite[js] += (~finite & ~nan).sum(axis=0)
            clean = np.where(finite, v - self._centre[js][None, :], 0.0)
            self._sum[js] += clean.sum(axis=0)
            self._sumsq[js] += np.square(clean).sum(axis=0)
            # searchsorted(edges, v, side="right") for all features at once: the number of
            # edges <= v (edges padded with +inf, which no finite value reaches).
            idx = (v[:, :, None] >= edges[None, :, :]).sum(axis=2) + self._offsets[js][None, :]
            self._bins += np.bincount(idx[finite], minlength=len(self._bins))

    def _count_categorical(self, ins: dict[str, np.ndarray], n_rows: int) -> None:
        for i in self._categorical:
            f = self.features[i]
            counts = self._cat[i]
            arr = ins.get(f.input)
            if arr is None or arr.shape[1] <= f.column:
                counts[-1] += n_rows
                continue
            vocab = self._vocab[i]
            oov = len(f.vocabulary)
            for value, c in Counter(arr[:, f.column].tolist()).items():
                if value is None or (isinstance(value, float) and math.isnan(value)):
                    counts[-1] += c
                else:
                    counts[vocab.get(_text(value), oov)] += c

    def _count_outputs(self, outs: dict[str, np.ndarray]) -> None:
        o = self.outputs
        if o.label is not None and o.label in outs:
            other = len(o.classes)
            for value, c in Counter(outs[o.label][:, 0].tolist()).items():
                self._pred[self._class_index.get(_text(value), other)] += c
        if o.scores is None or o.scores not in outs or outs[o.scores].dtype == object:
            return
        edges = self._score_edges32 if outs[o.scores].dtype == np.float32 else self._score_edges
        p = outs[o.scores].astype(np.float64, copy=False)
        s = p.max(axis=1) if o.reduce == "max" or p.shape[1] <= o.column else p[:, o.column]
        s = s[np.isfinite(s)]
        self._score += np.bincount(
            np.searchsorted(edges, s, side="right"), minlength=len(self._score)
        )
        if o.label is not None and p.shape[1] >= 2:  # class probabilities: confidence sums
            m = p.max(axis=1)
            m = m[np.isfinite(m)]
            self._conf += (m.size, float(m.sum()), float(np.square(m).sum()))

    # -- release --------------------------------------------------------------------------
    def flush(self) -> dict[str, Any] | None:
        """The window's summary body, or None while it holds fewer than ``min_rows`` rows
        (the rows are kept and the next window adds to them)."""
        with self._lock:
            self._drain()
            if self._rows_seen < max(self.min_rows, 1):
                self._windows += 1
                return None
            body = self._release()
            self._reset()
            return body

    @property
    def rows(self) -> int:
        with self._lock:
            return self._rows_seen + self._buffered

    def _release(self) -> dict[str, Any]:
        k = self.k_min
        o = self.outputs
        noise = _Noise(self._rng, self.epsilon, self._queries()) if self.epsilon else None
        rows = noise.count(np.array([self._rows_seen]))[0] if noise else self._rows_seen
        features: list[Any] = [None] * len(self.features)
        for j, i in enumerate(self._numeric):
            bins = self._bins[self._offsets[j] : self._offsets[j + 1]]
            cells = np.concatenate([bins, [self._nulls[j], self._nonfinite[j]]])
            if noise:
                cells = noise.count(cells)
            finite = int(bins.sum())
            sums: list[float | None] = [None, None]
            if noise is None and finite >= k:  # a mean of < k rows would reveal them
                mean = self._sum[j] / finite
                var = max(self._sumsq[j] / finite - mean * mean, 0.0)
                sums = list(_moments(self._centre[j] + mean, math.sqrt(var)))
            features[i] = [
                _merge_bins(cells[:-2].tolist(), k),
                *sums,  # always present: they tell a numeric entry from a categorical one
                *_trim([_cell(int(cells[-2]), k), _cell(int(cells[-1]), k)]),
            ]
        for i in self._categorical:
            cells = noise.count(self._cat[i]) if noise else self._cat[i]
            counts, oov = _merge_categories(cells[:-2].tolist(), int(cells[-2]), k)
            features[i] = [counts, *_trim([oov, _cell(int(cells[-1]), k)])]
        body: dict[str, Any] = {
            "schema": SCHEMA_VERSION,
            "profile": self.digest,
            "start": int(self._start),
            "end": int(self._clock()),
            "windows": self._windows,
            "rows": int(rows),
            "k": k,
            "features": features,
        }
        if o.label is not None:
            pred = noise.count(self._pred) if noise else self._pred
            counts, other = _merge_categories(pred[:-1].tolist(), int(pred[-1]), k)
            body["pred"] = [*counts, other]
        if o.scores is not None:
            score = noise.count(self._score) if noise else self._score
            body["score"] = _merge_bins(score.tolist(), k)
        if o.label is not None and o.scores is not None:
            conf = self._conf
            if noise:
                conf = np.array([noise.count(np.array([int(conf[0])]))[0], *noise.real(conf[1:])])
            body["conf"] = (
                [int(conf[0]), _round(conf[1]), _round(conf[2])] if conf[0] >= k else [0, 0, 0]
            )
        if self._skipped:
            body["skipped"] = self._skipped
        if self._confusion or noise:
            body["labels"] = self._labels(noise)
        if noise:
            body["dp"] = {
                "mechanism": "geometric",
                "epsilon": self.epsilon,
                "queries": noise.queries,
            }
        return body

    def _labels(self, noise: _Noise | None) -> list[list[int]]:
        size = len(self.outputs.classes) + 1
        if noise:  # every cell gets noise, zeros included, before sparse encoding
            dense = np.zeros((size, size), dtype=np.int64)
            for (t, p), c in self._confusion.items():
                dense[t, p] = c
            noisy = noise.count(dense.ravel()).reshape(size, size)
            ts, ps = np.nonzero(noisy)
            cells = {(int(t), int(p)): int(noisy[t, p]) for t, p in zip(ts, ps, strict=True)}
        else:
            cells = dict(self._confusion)
        return [[t, p, c] for (t, p), c in sorted(cells.items()) if _cell(c, self.k_min) > 0]

    def _queries(self) -> int:
        o = self.outputs
        m = 1 + len(self.features)  # rows, one histogram per feature
        m += (o.label is not None) + (o.scores is not None)
        m += 3 if o.label is not None and o.scores is not None else 0
        return m + (1 if o.label is not None else 0)  # confusion


class _Noise:
    """Two-sided geometric noise for counts, Laplace for [0, 1]-bounded sums."""

    def __init__(self, rng: np.random.Generator, epsilon: float, queries: int) -> None:
        self.rng, self.queries = rng, queries
        self.eps = epsilon / queries

    def count(self, cells: np.ndarray) -> np.ndarray:
        p = -math.expm1(-self.eps)  # 1 - exp(-eps): discrete Laplace with scale 1/eps
        g = self.rng.geometric(p, size=(2, len(cells)))
        noisy = np.asarray(cells, dtype=np.int64) + (g[0] - g[1])
        return np.asarray(np.maximum(noisy, 0))  # post-processing: no privacy cost

    def real(self, values: np.ndarray) -> np.ndarray:
        noisy = values + self.rng.laplace(0.0, 1.0 / self.eps, size=len(values))
        return np.asarray(np.maximum(noisy, 0.0))


def _merge_bins(counts: list[int], k: int) -> list[int | None]:
    """Fold every group of 0 < rows < k into its smaller neighbour (see module docstring)."""
    groups = [[i, c] for i, c in enumerate(counts)]  # [first bin, total]
    while len(groups) > 1:
        small = [g for g in range(len(groups)) if 0 < groups[g][1] < k]
        if not small:
            break
        g = min(small, key=lambda x: (groups[x][1], x))
        if g == 0:
            n = 1
        elif g == len(groups) - 1:
            n = g - 1
        else:  # the smaller non-empty neighbour (an empty one does not lift the group)
            n = min((g - 1, g + 1), key=lambda x: (groups[x][1] == 0, groups[x][1], x))
        left, right = min(g, n), max(g, n)
        groups[left][1] += groups[right][1]
        del groups[right]
    out: list[int | None] = [None] * len(counts)
    for first, total in groups:
        out[first] = total if total >= k else 0  # a lone small group is suppressed
    return out


def _merge_categories(counts: list[int], other: int, k: int) -> tuple[list[int | None], int]:
    """Fold categories below k into "other"; "other" below k is then suppressed (0)."""
    out: list[int | None] = list(counts)
    for i, c in enumerate(counts):
        if 0 < c < k:
            other += c
            out[i] = None
    return out, _cell(other, k)  # "other" still below k: suppressed


def _cell(c: int, k: int) -> int:
    return c if c == 0 or c >= k else 0


def _trim(entry: list[Any], keep: int = 0) -> list[Any]:
    while len(entry) > keep and entry[-1] == 0:
        entry.pop()
    return entry


def _as32(edges: np.ndarray) -> np.ndarray:
    return edges.astype(np.float32).astype(np.float64)


def _round(x: float, digits: int = 9) -> float:
    return float(f"{float(x):.{digits}g}")


def _moments(mean: float, std: float) -> tuple[float, float]:
    """Std to 3 significant digits, the mean to a thousandth of a std."""
    if std <= 0 or not math.isfinite(std):
        return _round(mean), 0.0
    decimals = max(0, -math.floor(math.log10(std / 1000)))
    return float(f"{mean:.{min(decimals, 20)}f}"), _round(std, 3)


def _centre(edges: tuple[float, ...]) -> float:
    return edges[len(edges) // 2] if edges else 0.0


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _count_rows(ins: dict[str, np.ndarray], outs: dict[str, np.ndarray]) -> int:
    for arr in (*ins.values(), *outs.values()):
        return int(arr.shape[0]) if arr.ndim else 1
    return 0
