"""Sequential input drift: every captured row through anytime-valid tests, no calibration.

Each feature is turned into scores with mean <= 0 while the live rows come from the reference's
distribution, and each score stream feeds a mixture e-CUSUM (the same family as the latency
detector, ``detectors.base.MixtureECusum``: an average over bets of ``max(M, 1) (1 + bet w)``):

- numeric feature: the live value's rank among the ``n`` reference values (ties broken at
  random, seeded), scaled to ``u`` in (0, 1), which is uniform under exchangeability.
  ``2u - 1`` (larger values) and ``1 - 2u`` (smaller) find location shifts; ``2|2u - 1| - 1``
  (wider) and its negative (narrower) scale changes;
- categorical feature: per category ``c`` with reference share ``p_c``, ``1{x = c} - p_c`` and
  its negative; values the reference never had get one stream against the Good-Turing share of
  unseen values.

A finite reference is compared with, not a known distribution: conditional on the reference, the
scores' mean is off by its sampling error (standard deviation ``1/sqrt(3n)`` for ranks), and a
week of rows would find that. So each score is lowered by ``reference_margin_sd`` of those
standard errors before the bet (a composite null: no more difference than the reference's own
noise); the bound then holds conditionally on the reference unless its error exceeds the margin.

The false-alarm bound is set in operator terms: at most one false alarm per ``arl_rows`` rows
(``false_alarm_weeks`` at ``rows_per_second``) over all ``S`` streams together, by alarming a
stream at ``S x arl_rows`` (the average of the streams' e-detectors is an e-detector). An alarm
becomes drift only when the rows since the alarmed component started differ from the reference
by at least ``effect_floor`` (Wasserstein distance in reference standard deviations) or
``categorical_floor`` (total variation distance of category shares), so huge volumes do not
flag trivial shifts.

Rows are processed in chunks with cumulative sums (the CUSUM recursion has a closed form), so a
week of rows at 10/s replays in minutes. Log e-values are capped a few nats above the threshold
(a cap only lowers them: the bound is kept) so a finding clears soon after the drift ends.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import stats

from tfwarden.detectors.drift.reference import CATEGORICAL, Reference
from tfwarden.detectors.drift.settings import SequentialSettings

Array = NDArray[Any]
BETS = np.array([0.1, 0.2, 0.35, 0.5, 0.7, 0.9])
CHUNK = 64
CAP_NATS = 4.0
GATE_EVERY = 512  # rows between effect sizings of an alarm below the floor


@dataclass(frozen=True)
class Stream:
    feature: int
    direction: str  # up, down, wider, narrower (numeric); "<category> up|down" (categorical)


class SequentialDrift:
    """Per-feature e-detectors against one reference (runs in the drift worker and in
    ``tfwarden backtest``; numpy and scipy)."""

    def __init__(self, reference: Reference, settings: SequentialSettings) -> None:
        self.reference, self.settings = reference, settings
        n = reference.rows
        data = reference.data
        self.numeric = [j for j, k in enumerate(reference.kinds) if k != CATEGORICAL]
        self.categorical = [j for j, k in enumerate(reference.kinds) if k == CATEGORICAL]
        self.sorted = {j: np.sort(data[:, j]) for j in self.numeric}
        self.scale = {j: float(np.std(data[:, j])) or 1.0 for j in self.numeric}
        margin = settings.reference_margin_sd
        self.rank_margin = margin / math.sqrt(3 * n)
        streams: list[Stream] = []
        for j in self.numeric:
            streams += [Stream(j, d) for d in ("up", "down", "wider", "narrower")]
        # categorical streams: (column, code, sign, share, margin)
        self.cat_streams: list[tuple[int, int, float, float, float]] = []
        self.shares: dict[int, Array] = {}
        for j in self.categorical:
            codes = reference.categories(j)
            counts = np.bincount(data[:, j].astype(int), minlength=codes).astype(float)
            singletons = float(np.sum(counts == 1))
            shares = counts / n
            shares[codes - 1] = (singletons + 1) / (n + 1)  # unseen values (Good-Turing)
            self.shares[j] = counts / n
            for code in range(codes):
                p = float(shares[code])
                error = margin * math.sqrt(max(p * (1 - p), 1.0 / n) / n) + 1.0 / n
                name = reference.vocab[j][code] if code < codes - 1 else "(unseen)"
                signs = (1.0,) if code == codes - 1 else (1.0, -1.0)
                for sign in signs:
                    self.cat_streams.append((j, code, sign, p, error))
                    streams.append(Stream(j, f"{name} {'up' if sign > 0 else 'down'}"))
        self.streams = streams
        self.log_threshold = math.log(len(streams)) + math.log(settings.arl_rows)
        self.log_m = np.zeros((len(streams), len(BETS)))
        self.start = np.zeros((len(streams), len(BETS)), dtype=np.int64)
        self.rows_seen = 0
        self._gate_after = 0
        self._ties = np.random.default_rng(0)  # seeded: same rows in, same findings out
        width = len(reference.features)
        self.buffer = np.zeros((settings.segment_rows, width))
        self.versions: list[int | None] = [None] * settings.segment_rows

    # -- scores ---------------------------------------------------------------------------------
    def scores(self, batch: Array) -> Array:
        """(rows, streams) scores in [-1, 1], each with mean <= 0 under no drift."""
        out = np.empty((batch.shape[0], len(self.streams)))
        col = 0
        n = self.reference.rows
        eps = self.rank_margin
        for j in self.numeric:
            ref = self.sorted[j]
            x = batch[:, j]
            below = np.searchsorted(ref, x, side="left")
            ties = np.searchsorted(ref, x, side="right") - below
            # the rank among the n + 1 values, ties broken at random, is uniform under no
            # drift; mid-ranks would give tied data (flags, one-hot) a positive spread score
            rank = below + np.floor(self._ties.random(x.shape[0]) * (ties + 1))
            u = (rank + 0.5) / (n + 1)
            loc = 2 * u - 1
            spread = 2 * np.abs(loc) - 1
            for score in (loc, -loc, spread, -spread):
                out[:, col] = (score - eps) / (1 + eps)
                col += 1
        for j, code, sign, p, error in self.cat_streams:
            hit = (batch[:, j].astype(int) == code).astype(float)
            out[:, col] = np.clip(sign * (hit - p) - error, -1.0, 1.0)
            col += 1
        return out

    # -- the e-detectors ------------------------------------------------------------------------
    def _log_e(self, log_m: Array) -> Array:
        """Mixture log e-value per stream (average over bets) of (..., streams, bets)."""
        top = log_m.max(axis=-1)
        return np.asarray(top + np.log(np.exp(log_m - top[..., None]).mean(axis=-1)))

    def _chunk(self, w: Array, offset: int) -> int | None:
        """Advance the CUSUMs over one chunk of scores; the chunk row of the first alarm."""
        increments = np.log1p(w[:, :, None] * BETS[None, None, :])  # (m, S, B)
        restart = self.log_m <= 0
        w0 = np.maximum(self.log_m, 0.0)
        start = np.where(restart, offset, self.start)
        cumulative = np.cumsum(increments, axis=0)
        m = cumulative.shape[0]
        running = np.minimum.accumulate(cumulative, axis=0)
        # minimum over s < t (exclusive); +inf before the first row
        before = np.concatenate([np.full((1,) + running.shape[1:], np.inf), running[:-1]])
        levels = cumulative + np.maximum(w0, -before)
        index = np.arange(m)[:, None, None]
        at_min = np.where(cumulative <= running, index, -1)
        last_min = np.maximum.accumulate(at_min, axis=0)
        last_before = np.concatenate([np.full((1,) + last_min.shape[1:], -1), last_min[:-1]])
        starts = np.where(-before >= w0, offset + last_before + 1, start[None])
        log_e = self._log_e(levels)  # (m, S)
        alarm_rows = np.nonzero((log_e >= self.log_threshold).any(axis=1))[0]
        self.log_m = np.minimum(levels[-1], self.log_threshold + CAP_NATS)
        self.start = starts[-1]
        self._chunk_levels, self._chunk_starts = levels, starts
        return int(alarm_rows[0]) if alarm_rows.size else None

    def observe(self, batch: Array, versions: list[int | None] | None = None) -> dict[str, Any]:
        """Feed rows in order; the report after the last one, with the first row (of this
        batch) at which drift above the effect floor was found, if any."""
        versions = versions or [None] * batch.shape[0]
        first: int | None = None
        first_report: dict[str, Any] | None = None
        for begin in range(0, batch.shape[0], CHUNK):
            rows = batch[begin:begin + CHUNK]
            offset = self.rows_seen
            self._remember(rows, versions[begin:begin + CHUNK])
            alarm = self._chunk(self.scores(rows), offset)
            if alarm is not None and first is None and offset >= self._gate_after:
                levels = self._chunk_levels[alarm]
                starts = self._chunk_starts[alarm]
                report = self._report(levels, starts, end=offset + alarm + 1)
                if report["drifted_features"]:
                    first, first_report = begin + alarm, report
                else:  # alarmed below the effect floor: size it again a little later
                    self._gate_after = offset + GATE_EVERY
        report = self._report(self.log_m, self.start, end=self.rows_seen)
        report["rows"] = int(batch.shape[0])
        report["first_drift_row"] = first
        if first_report is not None and not report["drifted_features"]:
            report["transient"] = first_report["drifted_features"]
        return report

    def _remember(self, rows: Array, versions: list[int | None]) -> None:
        size = self.settings.segment_rows
        slots = (self.rows_seen + np.arange(rows.shape[0])) % size
        self.buffer[slots] = rows
        for slot, version in zip(slots.tolist(), versions, strict=False):
            self.versions[slot] = version
        self.rows_seen += rows.shape[0]

    def _segment(self, begin: int, end: int) -> tuple[Array, list[int | None]]:
        """Rows [begin, end) still in the buffer (the most recent ``segment_rows``)."""
        size = self.settings.segment_rows
        begin = max(begin, end - size, 0)
        slots = np.arange(begin, end) % size
        return self.buffer[slots], [self.versions[s] for s in slots.tolist()]

    # -- the report -----------------------------------------------------------------------------
    def _report(self, log_m: Array, starts: Array, end: int) -> dict[str, Any]:
        log_e = self._log_e(log_m)
        leading = log_m.argmax(axis=1)
        features: list[dict[str, Any]] = []
        drifted: list[str] = []
        versions: Counter[int] = Counter()
        for j, name in enumerate(self.reference.features):
            mine = [i for i, s in enumerate(self.streams) if s.feature == j]
            best = max(mine, key=lambda i: log_e[i])
            alarmed = bool(log_e[best] >= self.log_threshold)
            entry: dict[str, Any] = {
                "name": name, "kind": self.reference.kinds[j], "test": "e-cusum",
                "statistic": round(float(log_e[best]), 3),
                "direction": self.streams[best].direction, "alarmed": alarmed}
            if alarmed:
                begin = int(starts[best, leading[best]])
                segment, seg_versions = self._segment(begin, end)
                entry.update(self._effect(j, segment[:, j]))
                entry["since_row"], entry["samples"] = begin, int(segment.shape[0])
                entry["drifted"] = entry["effect"] >= self._floor(j)
                if entry["drifted"]:
                    drifted.append(name)
                    versions.update(v for v in seg_versions if v is not None)
            features.append(entry)
        return {"engine": "sequential", "rows_seen": end, "drift": bool(drifted),
                "drifted_features": drifted, "features": features,
                "log_threshold": round(self.log_threshold, 3), "streams": len(self.streams),
                "version": versions.most_common(1)[0][0] if versions else None,
                "reference": {"hash": self.reference.hash, "rows": self.reference.rows}}

    def _floor(self, j: int) -> float:
        return self.settings.effect_floor if j in self.sorted else self.settings.categorical_floor

    def _effect(self, j: int, values: Array) -> dict[str, Any]:
        """Size of the drift of feature ``j`` in these rows, with an interval."""
        if values.size == 0:
            return {"effect": 0.0, "effect_name": "none"}
        if j in self.sorted:
            ref = self.sorted[j]
            distance = stats.wasserstein_distance(values, ref) / self.scale[j]
            n = ref.size
            below = np.searchsorted(ref, values, side="left")
            ties = np.searchsorted(ref, values, side="right") - below
            u = (below + ties / 2 + 0.5) / (n + 1)
            # P(live > reference): 0.5 without a location shift, with a normal interval
            half = 1.96 * float(np.std(u)) / math.sqrt(values.size) if values.size > 1 else 0.5
            centre = float(np.mean(u))
            return {"effect": round(float(distance), 4), "effect_name": "wasserstein_sd",
                    "p_live_above_reference": round(centre, 4),
                    "p_live_above_reference_ci": [round(max(0.0, centre - half), 4),
                                                  round(min(1.0, centre + half), 4)]}
        codes = self.reference.categories(j)
        live = np.bincount(values.astype(int), minlength=codes) / values.size
        distance = 0.5 * float(np.abs(live - self.shares[j]).sum())
        return {"effect": round(distance, 4), "effect_name": "total_variation"}
