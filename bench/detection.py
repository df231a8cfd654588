"""Detection delay and false verdicts on seeded synthetic canary traces: tfwarden next to the
statistical floor and faithful re-implementations of Flagger's analysis and Kayenta's
NetflixACAJudge (bench/peers.py, docs/peers.md), all on the identical traces.

Stable v1 and canary v2 probed at 10/s each, lognormal latency (median 20 ms, sigma 0.5 in log
space) with 0.2 % heavy spikes and +-30 % shared load swings; the canary is deployed at the
trace start and changes 60 s in. tfwarden runs through the same Backtest engine as
`tfwarden backtest`. The null trace (identical versions) gives false verdicts per day: tfwarden
watches it continuously, the peers run back-to-back rollouts over it.

    python bench/detection.py [--seeds 5] [--null-hours 24]
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

from peers import (  # noqa: E402
    FlaggerConfig,
    KayentaConfig,
    Requests,
    flagger_analysis,
    kayenta_analysis,
)
from tracegen import CanaryScenario, latency_trace  # noqa: E402

from tfwarden.detectors.backtest import Backtest  # noqa: E402
from tfwarden.detectors.trace import TraceEvent  # noqa: E402

FAULT_AT = 60.0
RATE = 10.0
ARL_PAIRS = 1e7
# request-duration max: the 99th percentile of the stable's own 1-min P99 (same query) over a
# day (seed 7) is 125 ms (median 87.5 ms, highest 212 ms): a user who looked would set 130 ms.
FLAGGER = {
    "flagger_threshold5": FlaggerConfig(threshold=5, duration_max_ms=130.0),
    "flagger_threshold1": FlaggerConfig(threshold=1, duration_max_ms=130.0),
}
KAYENTA = KayentaConfig()
TRACE_SECONDS = max(900.0, KAYENTA.warmup_s + KAYENTA.lifetime_s)  # room for a whole canary stage


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


def split_versions(records) -> tuple[Requests, Requests]:  # type: ignore[no-untyped-def]
    """The stable's and the canary's probes, as the peers' metric stores would record them."""
    stable, canary = Requests(), Requests()
    for record in records:
        if record["type"] == "latency":
            (stable if record["version"] == 1 else canary).add(
                float(record["t"]), float(record["ms"]), bool(record["ok"]))
    return stable, canary


def peer_delays(stable: Requests, canary: Requests, t0: float, end: float) -> dict[str, float | None]:
    """Seconds from the onset to each peer's rollback / failed stage; None = promoted/passed."""
    delays: dict[str, float | None] = {}
    for name, config in FLAGGER.items():
        outcome = flagger_analysis(canary, t0, end, config)
        delays[name] = outcome.t - t0 - FAULT_AT if outcome.verdict == "rollback" else None
    verdict = kayenta_analysis(stable, canary, t0, end, KAYENTA)
    delays["kayenta"] = verdict.t - t0 - FAULT_AT if verdict.verdict == "fail" else None
    return delays


def summary(delays: list[float | None]) -> dict[str, object]:
    found = [d for d in delays if d is not None]
    return {"found": f"{len(found)}/{len(delays)}",
            "delay_median_s": round(statistics.median(found), 1) if found else None,
            "delay_max_s": round(max(found), 1) if found else None}


def lorden_floor_seconds(theta: float, sigma: float, paired: bool) -> float:
    """ln(ARL0) / KL per sample, in seconds at RATE samples/s."""
    variance = (2 if paired else 1) * sigma * sigma
    kl = theta * theta / (2 * variance)
    return math.log(ARL_PAIRS) / kl / RATE


def scenario_rows(seeds: int) -> list[dict[str, object]]:
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
        delays: dict[str, list[float | None]] = {"tfwarden": [], **{p: [] for p in (*FLAGGER, "kayenta")}}
        for seed in range(seeds):
            scenario = CanaryScenario(seconds=TRACE_SECONDS, fault_at=FAULT_AT, seed=seed,
                                      **change)  # type: ignore[arg-type]
            records = list(latency_trace(scenario))
            delays["tfwarden"].append(first_regression(records, detectors, scenario.t0, FAULT_AT)[0])
            stable, canary = split_versions(records)
            for peer, delay in peer_delays(stable, canary, scenario.t0,
                                           scenario.t0 + TRACE_SECONDS).items():
                delays[peer].append(delay)
        row: dict[str, object] = {"scenario": name}
        row.update({who: summary(values) for who, values in delays.items()})
        if theta is not None:
            row["floor_paired_s"] = round(lorden_floor_seconds(theta, 0.5, True), 1)
            row["floor_known_stable_s"] = round(lorden_floor_seconds(theta, 0.5, False), 1)
        rows.append(row)
    return rows


def back_to_back(run, t0: float, end: float) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """Rollouts started one after another over [t0, end): (finished rollouts, failed ones)."""
    start, analyses, failed = t0, 0, 0
    while True:
        verdict, decided_at = run(start)
        if verdict == "running":
            return analyses, failed
        analyses += 1
        failed += verdict in ("rollback", "fail")
        start = decided_at


def null_row(null_hours: float) -> dict[str, object]:
    """A simulated stretch of identical versions: false regression verdicts of tfwarden, false
    rollbacks of Flagger and failed Kayenta stages over back-to-back rollouts."""
    scenario = CanaryScenario(seconds=null_hours * 3600, fault_at=1e12, seed=99)
    started = time.monotonic()
    engine = Backtest()
    false = {"latency": 0, "errors": 0}
    stable, canary = Requests(), Requests()
    for i, record in enumerate(latency_trace(scenario)):
        if record["type"] == "latency":
            (stable if record["version"] == 1 else canary).add(
                float(record["t"]), float(record["ms"]), bool(record["ok"]))  # type: ignore[arg-type]
        for finding in engine.feed(to_event(i, record)):
            if finding.verdict == "regression" and finding.detector in false:
                false[finding.detector] += 1
    replay_seconds = time.monotonic() - started
    t0, end = scenario.t0, scenario.t0 + null_hours * 3600
    days = null_hours / 24
    row: dict[str, object] = {
        "scenario": f"identical versions, {null_hours:g} h",
        "tfwarden": {"false_latency": false["latency"], "false_errors": false["errors"],
                     "false_per_day": round((false["latency"] + false["errors"]) / days, 2)},
        "events": engine.events, "tfwarden_replay_seconds": round(replay_seconds, 1)}
    started = time.monotonic()
    for name, config in FLAGGER.items():
        def flagger_run(start: float, config: FlaggerConfig = config) -> tuple[str, float]:
            outcome = flagger_analysis(canary, start, end, config)
            return outcome.verdict, outcome.t
        analyses, failed = back_to_back(flagger_run, t0, end)
        row[name] = {"rollouts": analyses, "false_rollbacks": failed,
                     "false_per_day": round(failed / days, 2),
                     "false_per_rollout": round(failed / analyses, 4) if analyses else None}

    def kayenta_run(start: float) -> tuple[str, float]:
        outcome = kayenta_analysis(stable, canary, start, end, KAYENTA)
        return outcome.verdict, outcome.t
    analyses, failed = back_to_back(kayenta_run, t0, end)
    row["kayenta"] = {"stages": analyses, "false_failures": failed,
                      "false_per_day": round(failed / days, 2),
                      "false_per_stage": round(failed / analyses, 4) if analyses else None}
    row["peers_seconds"] = round(time.monotonic() - started, 1)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--null-hours", type=float, default=24.0)
    args = parser.parse_args()
    for row in scenario_rows(args.seeds):
        print(json.dumps(row), flush=True)
    print(json.dumps(null_row(args.null_hours)), flush=True)


if __name__ == "__main__":
    main()
