"""The sequential drift engine: the closed-form chunked CUSUM equals the row-by-row e-detector,
delays on shifted features, no finding on long stationary streams, the effect floor, categories,
versions, and the worker operation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tfwarden.detectors.base import MixtureECusum
from tfwarden.detectors.drift import sequential
from tfwarden.detectors.drift.reference import Reference
from tfwarden.detectors.drift.sequential import BETS, SequentialDrift
from tfwarden.detectors.drift.settings import SequentialSettings
from tfwarden.detectors.drift.worker import Worker
from tfwarden.detectors.driftverdict import sequential_drift_finding

FEATURES = [f"f{i}" for i in range(10)]


def engine(seed: int = 0, rows: int = 2000, **settings: float) -> SequentialDrift:
    data = np.random.default_rng(seed).normal(size=(rows, 10))
    return SequentialDrift(Reference.from_rows(data.tolist(), FEATURES),
                           SequentialSettings(**settings))  # type: ignore[arg-type]


def rows_to_drift(det: SequentialDrift, rng: np.random.Generator, shift: float,
                  feature: int = 3, batch: int = 10, limit: int = 5000) -> int | None:
    seen = 0
    while seen < limit:
        rows = rng.normal(size=(batch, 10))
        rows[:, feature] += shift
        report = det.observe(rows)
        if report["first_drift_row"] is not None:
            return seen + report["first_drift_row"] + 1
        seen += batch
    return None


def test_chunked_cusum_equals_the_row_by_row_mixture_e_cusum() -> None:
    det = engine(1)
    rng = np.random.default_rng(2)
    batch = rng.normal(size=(300, 10))
    batch[150:, 2] += 0.8  # a change half way, so some streams restart and some grow
    scores = det.scores(batch)
    reference = [MixtureECusum(math.exp(det.log_threshold), bets=BETS.tolist())
                 for _ in det.streams]
    det.observe(batch)
    for stream, cusum in enumerate(reference):
        for w in scores[:, stream]:
            cusum.update(float(w))
    expected = np.array([[min(v, det.log_threshold + sequential.CAP_NATS) for v in c.log_m]
                         for c in reference])
    # the cap applies at chunk ends: compare streams that stayed below it
    below = expected.max(axis=1) < det.log_threshold
    assert below.sum() > 30
    np.testing.assert_allclose(det.log_m[below], expected[below], atol=1e-9)
    starts = np.array([c.starts for c in reference])
    np.testing.assert_array_equal(det.start[below], starts[below])


def test_scores_have_mean_zero_before_the_margin() -> None:
    """Over references, each score has mean 0 under no drift; given one reference it is off by
    that reference's sampling error (sd 1/sqrt(3n)), which the margin covers."""
    means = []
    for seed in range(12):
        det = engine(seed, reference_margin_sd=0.0)
        scores = det.scores(np.random.default_rng(50 + seed).normal(size=(5000, 10)))
        assert scores.min() >= -1 and scores.max() <= 1
        means.append(scores.mean(axis=0))
    per_reference = np.abs(np.array(means))
    assert per_reference.max() < 5 / math.sqrt(3 * 2000) + 0.03
    assert np.abs(np.mean(means, axis=0)).max() < 0.02


@pytest.mark.parametrize(("shift", "most"), [(1.0, 150), (-1.0, 150), (0.5, 450)])
def test_a_shift_in_one_of_ten_features_is_found_fast(shift: float, most: int) -> None:
    delays = [rows_to_drift(engine(seed), np.random.default_rng(100 + seed), shift)
              for seed in range(5)]
    assert all(d is not None for d in delays), delays
    assert float(np.median([d for d in delays if d is not None])) <= most, delays


def test_a_shift_is_reported_with_its_feature_direction_size_and_version() -> None:
    det = engine(5)
    rng = np.random.default_rng(6)
    det.observe(rng.normal(size=(500, 10)), [1] * 500)
    shifted = rng.normal(size=(400, 10))
    shifted[:, 7] += 1.0
    report = det.observe(shifted, [2] * 400)
    assert report["drifted_features"] == ["f7"] and report["version"] == 2
    finding = sequential_drift_finding("m", report, 10.0)
    assert finding.verdict == "regression" and finding.version == 2
    assert finding.evidence["statistic"] == "log_e_value"
    assert finding.evidence["value"] >= finding.evidence["threshold"] == report["log_threshold"]
    assert finding.evidence["samples"] == 900
    low, high = finding.effect["p_live_above_reference_ci"]
    assert 0.6 < low < finding.effect["p_live_above_reference"] < high
    assert finding.effect["feature"] == "f7" and finding.effect["wasserstein_sd"] > 0.5
    assert finding.evidence["features"]["f7"]["direction"] == "up"


def test_a_wider_spread_is_found() -> None:
    det = engine(7)
    rng = np.random.default_rng(8)
    rows = rng.normal(size=(3000, 10))
    rows[:, 1] *= 2.0
    report = det.observe(rows)
    assert report["first_drift_row"] is not None and report["drifted_features"] == ["f1"]
    assert next(f for f in report["features"] if f["name"] == "f1")["direction"] == "wider"


def test_no_finding_on_a_long_stationary_stream() -> None:
    det = engine(9)
    rng = np.random.default_rng(10)
    for _ in range(40):
        report = det.observe(rng.normal(size=(5000, 10)))
        assert report["first_drift_row"] is None and not report["drift"]
    assert max(f["statistic"] for f in report["features"]) < det.log_threshold


def test_the_reference_margin_is_what_keeps_a_fixed_reference_from_alarming() -> None:
    """Without the margin the smallest bets find the reference's own sampling error."""
    rng = np.random.default_rng(11)
    reference = Reference.from_rows(rng.normal(size=(300, 10)).tolist(), FEATURES)
    live = rng.normal(size=(60_000, 10))
    naive = SequentialDrift(reference, SequentialSettings(reference_margin_sd=0.0,
                                                          effect_floor=0.0))
    kept = SequentialDrift(reference, SequentialSettings(effect_floor=0.0))
    assert naive.observe(live)["first_drift_row"] is not None
    assert kept.observe(live)["first_drift_row"] is None


def test_a_drift_below_the_effect_floor_is_not_a_finding() -> None:
    rng = np.random.default_rng(12)
    reference = Reference.from_rows(rng.normal(size=(50_000, 10)).tolist(), FEATURES)
    live = rng.normal(size=(80_000, 10))
    live[:, 0] += 0.07  # real but trivial: Wasserstein 0.07 sd
    floored = SequentialDrift(reference, SequentialSettings()).observe(live)
    assert not floored["drift"]
    entry = floored["features"][0]
    assert entry["alarmed"] and entry["effect"] < 0.1 and not entry["drifted"]
    assert sequential_drift_finding("m", floored, 1.0).reason.endswith("below the effect floor")
    unfloored = SequentialDrift(reference, SequentialSettings(effect_floor=0.0)).observe(live)
    assert unfloored["drifted_features"] == ["f0"]


def test_categories_shifting_and_new_ones_are_found() -> None:
    rng = np.random.default_rng(13)
    colors = ["a", "b", "c"]
    ref_rows = [[str(rng.choice(colors, p=[0.5, 0.3, 0.2])), float(rng.normal())]
                for _ in range(2000)]
    reference = Reference.from_rows(ref_rows, ["color", "size"])
    det = SequentialDrift(reference, SequentialSettings())
    same = [[str(rng.choice(colors, p=[0.5, 0.3, 0.2])), float(rng.normal())]
            for _ in range(20_000)]
    assert not det.observe(reference.encode(same))["drift"]
    shifted = [[str(rng.choice(colors + ["new"], p=[0.35, 0.3, 0.2, 0.15])), float(rng.normal())]
               for _ in range(2000)]
    report = det.observe(reference.encode(shifted))
    assert report["drifted_features"] == ["color"] and report["first_drift_row"] < 300
    entry = report["features"][0]
    assert entry["effect_name"] == "total_variation" and entry["effect"] > 0.1
    assert entry["direction"] in ("(unseen) up", "a down")


def test_the_worker_runs_the_engine_and_refuses_bad_requests(tmp_path: object) -> None:
    from pathlib import Path

    worker = Worker(Path(str(tmp_path)))
    rows = np.random.default_rng(14).normal(size=(200, 1)).tolist()
    answer = worker.handle({"op": "configure", "model": "m", "engine": "scipy",
                            "features": ["x"], "reference": {"rows": rows},
                            "sequential": SequentialSettings().model_dump()})
    assert "error" not in answer
    shifted = (np.random.default_rng(15).normal(size=(300, 1)) + 2).tolist()
    report = worker.handle({"op": "sequential", "model": "m", "rows": shifted,
                            "versions": [3] * 300})
    assert report["drift"] and report["version"] == 3
    bad = worker.handle({"op": "sequential", "model": "m", "rows": shifted, "versions": [1]})
    assert bad == {"error": "sequential: versions: expected 300 entries, got 1"}
    worker.handle({"op": "configure", "model": "w", "engine": "scipy", "features": ["x"],
                   "reference": {"rows": rows}})
    missing = worker.handle({"op": "sequential", "model": "w", "rows": shifted})
    assert "has no sequential drift configured" in missing["error"]


def test_the_backtest_replay_finds_drift_row_by_row_and_names_the_version() -> None:
    from tfwarden.detectors.drift.replay import InputDriftReplay
    from tfwarden.detectors.drift.settings import DriftSettings
    from tfwarden.detectors.trace import TraceEvent

    replay = InputDriftReplay(lambda model: DriftSettings(engine="scipy"))
    rng = np.random.default_rng(16)
    found = []
    for line in range(300):  # 10 rows a line: 2,000 reference rows, then live ones
        rows = rng.normal(size=(10, 3))
        if line >= 250:
            rows[:, 0] += 1.0
        event = TraceEvent(line + 1, 1000.0 + line, "inputs", "m", 1 if line < 250 else 2,
                           features=("a", "b", "c"), rows=tuple(map(tuple, rows.tolist())))
        found += list(replay.feed(event))
    assert [f.verdict for f in found] == ["ok", "regression"]
    regression = found[1]
    assert regression.version == 2 and regression.effect["drifted_features"] == ["a"]
    assert 1250.0 < regression.t <= 1262.0  # within 120 rows of the change
    assert replay.models["m"].engine is None  # no batch engine built for the default method


def test_tied_values_flags_and_constants_are_no_drift() -> None:
    """Ranks with ties broken at random stay uniform: a 0/1 flag or a constant feature equal to
    the reference does not sit at its threshold (mid-ranks gave them a positive spread score)."""
    rng = np.random.default_rng(17)
    ref = np.column_stack([rng.integers(0, 2, 2000), np.full(2000, 3.0), rng.poisson(2, 2000)])
    det = SequentialDrift(Reference.from_rows(ref.tolist(), ["flag", "const", "count"]),
                          SequentialSettings())
    live = np.column_stack([rng.integers(0, 2, 30_000), np.full(30_000, 3.0),
                            rng.poisson(2, 30_000)])
    report = det.observe(live.astype(float))
    assert not any(f["alarmed"] for f in report["features"]), report["features"]
    shifted = np.column_stack([(rng.random(3000) < 0.8).astype(float), np.full(3000, 3.0),
                               rng.poisson(2, 3000)])
    assert det.observe(shifted)["drifted_features"] == ["flag"]
