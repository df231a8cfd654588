"""Memory leak detection delay and false findings on seeded, varied RSS traces (bench/leakgen.py),
replayed through ``tfwarden.detectors.backtest.Backtest`` (the engine of ``tfwarden backtest``)
with DEFAULT settings. One JSON line per scenario, then a readable summary.

    python bench/leaks.py [--seeds 5] [--first-seed 0] [--null-days 3] [--jobs 2] [--only NAME]
                          [--baseline-v1]

``--baseline-v1`` replays the same traces through the v1 leak detector (detectors/memory.py at
commit ``V1_COMMIT``, read with ``git show`` at run time, its own default settings; v1 had no
retention detector, so none runs).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import types
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from leakgen import LeakScenario, draw, floor_hours, leak_trace  # noqa: E402

from tfwarden.core.types import INCONCLUSIVE, REGRESSION, Finding  # noqa: E402
from tfwarden.detectors.backtest import Backtest  # noqa: E402
from tfwarden.detectors.trace import parse_record  # noqa: E402

SCENARIOS: dict[str, dict[str, object]] = {
    "leak 1 MB/h": {"hours": 28.0, "leak_mb_per_hour": 1.0},
    "leak 5 MB/h": {"hours": 14.0, "leak_mb_per_hour": 5.0, "goal_h": 3.0},
    "leak 20 MB/h": {"hours": 10.0, "leak_mb_per_hour": 20.0},
    "leak 100 MB/h, 1 GB headroom": {"hours": 7.0, "leak_mb_per_hour": 100.0,
                                     "headroom_mb": 1024.0, "goal_h": 20 / 60},
    "leak-free": {"null": True},
    "retention after unload": {"hours": 10.0, "retention": True},
    "clean swaps": {"hours": 30.0, "swaps": True},
}


V1_COMMIT = "63c0aa4"
ROOT = Path(__file__).resolve().parent.parent


class _NoRetention:
    """v1 had no retention detector: this one never judges."""

    name = "memory_retention"

    def __init__(self, target: str, *_: object, **__: object) -> None:
        self.target = target

    def observe(self, sample: object) -> None:
        return None

    def evaluate(self, now: float) -> Finding:
        return Finding(self.name, INCONCLUSIVE, now, target=self.target, reason="v1 baseline")


def use_v1() -> None:
    """Route the roster's memory detectors to v1 (in this process only)."""
    from tfwarden.detectors import roster

    source = subprocess.run(["git", "show", f"{V1_COMMIT}:detectors/memory.py"], cwd=ROOT,
                            check=True, capture_output=True, text=True).stdout
    module = types.ModuleType("tfwarden_memory_v1")
    exec(compile(source, f"memory.py@{V1_COMMIT}", "exec"), module.__dict__)  # noqa: S102
    v1 = module.__dict__["MemoryLeak"]
    roster.MemoryLeak = lambda target, settings=None: v1(target)  # type: ignore[misc,assignment]
    roster.MemoryRetention = _NoRetention  # type: ignore[misc,assignment]


def run_one(name: str, seed: int, null_days: float, v1: bool = False) -> dict[str, object]:
    if v1:
        use_v1()
    spec = dict(SCENARIOS[name])
    spec.pop("goal_h", None)
    if spec.pop("null", False):
        spec["hours"] = 24 * null_days
    scenario = LeakScenario(seed=seed, **spec)  # type: ignore[arg-type]
    components = draw(scenario)
    engine = Backtest()
    onset = scenario.t0 + components.onset_s
    found = None
    early, findings, retention = 0, 0, None
    for number, record in enumerate(leak_trace(scenario, components), start=1):
        for finding in engine.feed(parse_record(record, number)):
            if finding.verdict != REGRESSION:
                continue
            if finding.detector == "memory_retention":
                retention = retention or finding.t - scenario.t0
                continue
            findings += 1
            if scenario.leak_mb_per_hour > 0 and finding.t >= onset:
                found = found if found is not None else finding.t - onset
            else:
                early += 1
    return {"scenario": name, "seed": seed, "delay_s": found, "false_findings": early,
            "findings": findings, "retention_at_s": retention, "sigma": components.sigma,
            "rho": components.rho, "saws": components.saws}


def summarize(name: str, rows: list[dict[str, object]]) -> dict[str, object]:
    spec = SCENARIOS[name]
    out: dict[str, object] = {"scenario": name, "seeds": [r["seed"] for r in rows]}
    leak = float(spec.get("leak_mb_per_hour", 0.0))  # type: ignore[arg-type]
    if leak > 0:
        delays = [r["delay_s"] for r in rows]
        got = [float(d) for d in delays if d is not None]  # type: ignore[arg-type]
        out.update(found=f"{len(got)}/{len(rows)}",
                   median_h=round(statistics.median(got) / 3600, 2) if got else None,
                   worst_h=None if len(got) < len(rows) else round(max(got) / 3600, 2),
                   false_before_onset=sum(int(r["false_findings"]) for r in rows),  # type: ignore[call-overload]
                   floor_iid_h=round(floor_hours(leak), 2),
                   floor_rho09_h=round(floor_hours(leak) * 2.7, 2),
                   floor_worst_seed_h=round(max(floor_hours(leak, float(r["sigma"]),  # type: ignore[arg-type]
                                                            float(r["rho"]))  # type: ignore[arg-type]
                                                for r in rows), 2),
                   goal_h=spec.get("goal_h"))
    elif spec.get("retention"):
        out.update(found=f"{sum(1 for r in rows if r['retention_at_s'])}/{len(rows)}",
                   leak_findings=sum(int(r["findings"]) for r in rows))  # type: ignore[call-overload]
    else:
        out.update(runs_with_finding=f"{sum(1 for r in rows if r['findings'])}/{len(rows)}",
                   findings_total=sum(int(r["findings"]) for r in rows),  # type: ignore[call-overload]
                   false_retention=sum(1 for r in rows if r["retention_at_s"]), goal=0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--null-days", type=float, default=3.0)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--only", action="append", choices=list(SCENARIOS))
    parser.add_argument("--baseline-v1", action="store_true",
                        help=f"replay through the v1 leak detector (git show {V1_COMMIT})")
    args = parser.parse_args()
    started = time.monotonic()
    names = args.only or list(SCENARIOS)
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    jobs = [(n, s, args.null_days, args.baseline_v1) for n in names for s in seeds]
    with ProcessPoolExecutor(args.jobs) as pool:
        results = list(pool.map(run_one, *zip(*jobs, strict=True)))
    summaries = []
    for name in names:
        rows = [r for r in results if r["scenario"] == name]
        for row in rows:
            print(json.dumps({"kind": "seed", **row}))
        summaries.append(summarize(name, rows))
        print(json.dumps({"kind": "scenario", **summaries[-1]}))
    label = " (v1 baseline)" if args.baseline_v1 else ""
    print(f"\nmemory leak benchmark{label}, seeds {seeds.start}-{seeds.stop - 1}, "
          f"{time.monotonic() - started:.0f} s", file=sys.stderr)
    for s in summaries:
        detail = ", ".join(f"{k} {v}" for k, v in s.items() if k not in ("scenario", "seeds"))
        print(f"  {s['scenario']:<30} {detail}", file=sys.stderr)


if __name__ == "__main__":
    main()
