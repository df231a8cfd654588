"""Detection delay and false verdicts on seeded synthetic traces, next to the statistical floor
and a Flagger-style baseline (60 s interval, static thresholds, rollback after 5 failed checks).

Latency/error scenarios: stable v1 and canary v2 probed at 10/s each, lognormal latency (median
20 ms, sigma 0.5 in log space) with 0.2 % heavy spikes and +-30 % shared load swings; the canary
changes 60 s in. Memory scenarios: RSS every 10 s with a 10 min warm-up ramp, a 30 MB GC sawtooth
and AR(1) noise (sigma 5 MB). Every trace runs through the same Backtest engine as
`tfwarden backtest`.

    python bench/detection.py [--seeds 5] [--null-hours 24] [--memory-null-days 3]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tracegen import CanaryScenario, MemoryScenario, latency_trace, memory_trace  # noqa: E402

from tfwarden.detectors.backtest import Backtest  # noqa: E402
from tfwarden.detectors.trace import TraceEvent  # noqa: E402

FAULT_AT = 60.0
RATE = 10.0
ARL_PAIRS = 1e7


def to_event(i: int, record: dict[str, object]) -> TraceEvent:
    return TraceEvent(line=i, t=float(record["t"]), type=str(record["type"]),  # type: ignore[arg-type]
                      model=str(record.get("model", "")),
                      version=record.get("version"),  # type: ignore[arg-type]
                      role=str(record.get("role", "")), ms=float(record.get("ms", 0.0)),  # type: ignore[arg-type]
                      ok=bool(record.get("ok", True)), target=str(record.get("target", "")),
                      rss_bytes=float(record.get("rss_bytes", 0.0)),  # type: ignore[arg-type]
                      limit_bytes=record.get("limit_bytes"))  # type: ignore[arg-type]


def first_regression(records, detectors: tuple[str, ...], t0: float, onset: float):  # type: ignore[no-untyped-def]
    """Seconds from onset to the first regression of the given detectors, and how many
    regression verdicts appeared before the onset (false)."""
    engine = Backtest()
    false = 0
    for i, record in enumerate(records):
        for finding in engine.feed(to_event(i, record)):
            if finding.detector in detectors and finding.verdict == "regression":
                if finding.t - t0 < onset:
                    false += 1
                else:
                    return finding.t - t0 - onset, false
    return None, false


def flagger(records, t0: float, onset: float, p99_threshold_ms: float,  # type: ignore[no-untyped-def]
            min_success: float = 0.99, interval: float = 60.0, threshold: int = 5):
    """Flagger's analysis: every `interval`, canary p99 over the last interval against a static
    threshold and success rate against a minimum; rollback after `threshold` failed checks."""
    window: list[tuple[float, float, bool]] = []
    next_check = t0 + interval
    failed = 0
    rollbacks_before_onset = 0
    for record in records:
        if record["type"] != "latency" or record["version"] != 2:
            continue
        t = float(record["t"])
        while t >= next_check:
            recent = [w for w in window if w[0] >= next_check - interval]
            if recent:
                latencies = sorted(ms for _, ms, _ in recent)
                p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
                success = sum(ok for _, _, ok in recent) / len(recent)
                if p99 > p99_threshold_ms or success < min_success:
                    failed += 1
            else:
                failed += 1  # "no values" counts as a failure in Flagger
            if failed >= threshold:
                if next_check - t0 < onset:
                    rollbacks_before_onset += 1
                    failed = 0
                else:
                    return next_check - t0 - onset, rollbacks_before_onset
            next_check += interval
        window.append((t, float(record["ms"]), bool(record["ok"])))
        if len(window) > 5000:
            del window[:1000]
    return None, rollbacks_before_onset


def lorden_floor_seconds(theta: float, sigma: float, paired: bool) -> float:
    """ln(ARL0) / KL per sample, in seconds at RATE samples/s."""
    variance = (2 if paired else 1) * sigma * sigma
    kl = theta * theta / (2 * variance)
    return math.log(ARL_PAIRS) / kl / RATE


def _median(values: list[float | None]) -> float | None:
    found = [v for v in values if v is not None]
    return round(statistics.median(found), 1) if found else None


def latency_rows(seeds: int, null_hours: float) -> list[dict[str, object]]:
    stable_p99 = 20 * math.exp(2.326 * 0.5) * 1.3  # p99 at the load peak
    scenarios = [
        ("median +10 %", dict(canary_factor=1.10), ("latency",), math.log(1.10)),
        ("median +25 %", dict(canary_factor=1.25), ("latency",), math.log(1.25)),
        ("median +100 % (2x)", dict(canary_factor=2.0), ("latency",), math.log(2.0)),
        ("p99 only (3 % of requests x8)", dict(canary_tail_rate=0.03), ("latency",), None),
        ("errors 1 % vs 0.1 %", dict(canary_error_rate=0.01), ("errors",), None),
        ("errors 5 % vs 0.1 %", dict(canary_error_rate=0.05), ("errors",), None),
        ("errors 50 % vs 0.1 %", dict(canary_error_rate=0.5), ("errors",), None),
    ]
    rows = []
    for name, change, detectors, theta in scenarios:
        delays, flagger_delays = [], []
        for seed in range(seeds):
            scenario = CanaryScenario(seconds=900, fault_at=FAULT_AT, seed=seed, **change)  # type: ignore[arg-type]
            records = list(latency_trace(scenario))
            delay, _ = first_regression(records, detectors, scenario.t0, FAULT_AT)
            delays.append(delay)
            flagger_delays.append(flagger(records, scenario.t0, FAULT_AT, stable_p99 * 1.2)[0])
        found = [d for d in delays if d is not None]
        rows.append({
            "scenario": name, "found": f"{len(found)}/{seeds}",
            "delay_median_s": round(statistics.median(found), 1) if found else None,
            "delay_max_s": round(max(found), 1) if found else None,
            "floor_paired_s": (None if theta is None
                               else round(lorden_floor_seconds(theta, 0.5, True), 1)),
            "floor_known_stable_s": (None if theta is None
                                     else round(lorden_floor_seconds(theta, 0.5, False), 1)),
            "flagger_found": f"{sum(d is not None for d in flagger_delays)}/{seeds}",
            "flagger_delay_median_s": _median(flagger_delays),
        })
    # a simulated stretch of identical versions: false regression verdicts and Flagger rollbacks
    scenario = CanaryScenario(seconds=null_hours * 3600, fault_at=1e12, seed=99)
    started = time.monotonic()
    records = latency_trace(scenario)
    engine = Backtest()
    false = {"latency": 0, "errors": 0}
    flagger_records = []
    for i, record in enumerate(records):
        if record["type"] == "latency" and record["version"] == 2:
            flagger_records.append(record)
        for finding in engine.feed(to_event(i, record)):
            if finding.verdict == "regression" and finding.detector in false:
                false[finding.detector] += 1
    _, flagger_false = flagger(flagger_records, scenario.t0, 1e12, stable_p99 * 1.2)
    rows.append({"scenario": f"identical versions, {null_hours:g} h", "false_latency": false["latency"],
                 "false_errors": false["errors"], "flagger_false_rollbacks": flagger_false,
                 "events": engine.events, "replay_seconds": round(time.monotonic() - started, 1)})
    return rows


def memory_rows(seeds: int, null_days: float) -> list[dict[str, object]]:
    rows = []
    for leak in (1, 5, 20, 100):
        delays = []
        for seed in range(seeds):
            scenario = MemoryScenario(hours=12, leak_mb_per_hour=leak, seed=seed)
            delay, _ = first_regression(memory_trace(scenario), ("memory",), scenario.t0, 0.0)
            delays.append(None if delay is None else delay / 3600)
        found = [d for d in delays if d is not None]
        # detection.md: T = [(z_a + z_b) sigma sqrt(12 dt) / b]^(2/3), alpha .001, power .9
        floor_h = (((3.09 + 1.28) * 5 * math.sqrt(12 * 10 / 3600)) / leak) ** (2 / 3)
        rows.append({"scenario": f"leak {leak} MB/h (rho 0.9)", "found": f"{len(found)}/{seeds}",
                     "delay_median_h": round(statistics.median(found), 2) if found else None,
                     "delay_max_h": round(max(found), 2) if found else None,
                     "floor_iid_h": round(floor_h, 2), "floor_rho_0.9_h": round(floor_h * 2.7, 2)})
    for rho in (0.9, 0.98):
        false = 0
        for seed in range(seeds):
            scenario = MemoryScenario(hours=24 * null_days, rho=rho, seed=100 + seed)
            delay, _ = first_regression(memory_trace(scenario), ("memory",), scenario.t0, 0.0)
            false += delay is not None
        rows.append({"scenario": f"leak-free sawtooth, {null_days:g} days, rho {rho}",
                     "runs_with_a_leak_finding": f"{false}/{seeds}"})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--null-hours", type=float, default=24.0)
    parser.add_argument("--memory-null-days", type=float, default=3.0)
    args = parser.parse_args()
    for row in latency_rows(args.seeds, args.null_hours) + memory_rows(args.seeds,
                                                                       args.memory_null_days):
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
