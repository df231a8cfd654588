"""Sequential drift (the default method) on seeded data: rows to a finding, false findings per
simulated week, and the CUSUM oracle that knows the feature and the shift (the floor).

1. Delay: a fresh reference of 2,000 x 10 standard normal features per seed; 1,000 stationary
   rows, then a change in one feature; rows fed in batches of 10 (one second at 10 rows/s);
   rows from the change to the first row at which the engine reports drift above the floor.
2. Oracle: the Gaussian log-likelihood-ratio CUSUM for the known shift in the known feature,
   with its threshold set (Siegmund's approximation) to the same guaranteed average run length
   as the default bound (one false alarm per 4 weeks at 10 rows/s), and to one week.
3. False findings: a week at 10 rows/s (6,048,000 rows of 10 features) per seed, stationary.
4. ``tfwarden backtest``: one generated trace of ``inputs`` lines (reference, then a 1 sigma
   shift in one of 10 features) through the CLI, default settings.

    python bench/drift_sequential.py [--seeds 20] [--null-weeks 1] [--null-seeds 5]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tfwarden.detectors.drift.reference import Reference  # noqa: E402
from tfwarden.detectors.drift.sequential import SequentialDrift  # noqa: E402
from tfwarden.detectors.drift.settings import SequentialSettings  # noqa: E402

FEATURES = [f"f{i}" for i in range(10)]
WEEK_ROWS = 7 * 86400 * 10
LIMIT = 20_000


def _reference(rng: np.random.Generator, categorical: bool) -> Reference:
    rows: list[list[float | str]] = rng.normal(size=(2000, 10)).tolist()
    names = list(FEATURES)
    if categorical:
        colors = rng.choice(["a", "b", "c"], size=2000, p=[0.5, 0.3, 0.2])
        rows = [[*r, str(c)] for r, c in zip(rows, colors, strict=True)]
        names.append("color")
    return Reference.from_rows(rows, names)


def _rows(rng: np.random.Generator, reference: Reference, n: int, change: str | None,
          size: float) -> np.ndarray:
    batch = rng.normal(size=(n, 10))
    if change == "location":
        batch[:, 3] += size
    elif change == "scale":
        batch[:, 3] *= size
    if len(reference.features) == 11:
        p = [0.4, 0.3, 0.3] if change == "categorical" else [0.5, 0.3, 0.2]
        codes = rng.choice(3, size=n, p=p).astype(float)
        batch = np.column_stack([batch, codes])
    return batch


def delay(change: str, size: float, seed: int) -> int | None:
    rng = np.random.default_rng(seed)
    reference = _reference(rng, categorical=change == "categorical")
    engine = SequentialDrift(reference, SequentialSettings())
    for _ in range(100):
        if engine.observe(_rows(rng, reference, 10, None, 0))["first_drift_row"] is not None:
            return -1  # a false finding before the change
    seen = 0
    while seen < LIMIT:
        report = engine.observe(_rows(rng, reference, 10, change, size))
        if report["first_drift_row"] is not None:
            return seen + int(report["first_drift_row"]) + 1
        seen += 10
    return None


def oracle_threshold(delta: float, arl: float) -> float:
    """h with Siegmund's ARL0 = (e^b - b - 1) / (delta^2 / 2), b = h + 1.166 delta, equal to
    ``arl`` (bisection)."""
    low, high = 0.0, 60.0
    for _ in range(100):
        h = (low + high) / 2
        b = h + 1.166 * delta
        if (math.exp(b) - b - 1) / (delta * delta / 2) < arl:
            low = h
        else:
            high = h
    return (low + high) / 2


def oracle_delay(delta: float, arl: float, trials: int = 2000) -> float:
    """Median rows to alarm of the known-shift CUSUM started at 0 after the change."""
    h = oracle_threshold(delta, arl)
    rng = np.random.default_rng(1)
    w = np.zeros(trials)
    done = np.full(trials, -1)
    for step in range(1, 100_000):
        live = done < 0
        if not live.any():
            break
        x = rng.normal(delta, 1.0, size=live.sum())
        w[live] = np.maximum(0.0, w[live] + delta * x - delta * delta / 2)
        hit = np.flatnonzero(live)[w[live] >= h]
        done[hit] = step
    return float(np.median(done))


def null_week(seed: int, weeks: float) -> dict[str, object]:
    rng = np.random.default_rng(10_000 + seed)
    reference = _reference(rng, categorical=False)
    engine = SequentialDrift(reference, SequentialSettings())
    rows = int(WEEK_ROWS * weeks)
    started = time.monotonic()
    findings, top = 0, -math.inf
    for _ in range(rows // 6000):
        report = engine.observe(rng.normal(size=(6000, 10)))
        findings += report["first_drift_row"] is not None
        top = max(top, max(f["statistic"] for f in report["features"]))
    return {"seed": seed, "rows": rows, "findings": findings,
            "max_log_e": round(top, 2), "log_threshold": round(engine.log_threshold, 2),
            "seconds": round(time.monotonic() - started, 1)}


def backtest() -> dict[str, object]:
    """A trace through ``tfwarden backtest``: 2,000 reference rows, 3,000 stationary rows, then
    a 1 sigma shift in f3 from row 5,000, in lines of 10 rows (one a second)."""
    rng = np.random.default_rng(7)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "inputs.jsonl"
        with path.open("w") as out:
            for line in range(800):
                rows = rng.normal(size=(10, 10))
                if line >= 500:
                    rows[:, 3] += 1.0
                out.write(json.dumps({"t": 1_764_000_000.0 + line, "type": "inputs",
                                      "model": "m", "version": 1 if line < 500 else 2,
                                      "features": FEATURES, "rows": rows.tolist()}) + "\n")
        done = subprocess.run([sys.executable, "-m", "tfwarden.daemon", "backtest", str(path)],
                              capture_output=True, text=True, check=True)
    findings = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    regression = next(f for f in findings if f.get("verdict") == "regression")
    return {"scenario": "tfwarden backtest, 1 sigma in f3 from row 5,000",
            "finding_after_rows": round((regression["t"] - 1_764_000_000.0 - 500) * 10 + 10),
            "finding_version": regression["version"], "stderr": done.stderr.strip()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--null-weeks", type=float, default=1.0)
    parser.add_argument("--null-seeds", type=int, default=5)
    args = parser.parse_args()
    arl = SequentialSettings().arl_rows
    for change, size, name in [("location", 1.0, "1 sigma, 1 of 10 features"),
                               ("location", 0.5, "0.5 sigma, 1 of 10"),
                               ("location", 0.25, "0.25 sigma, 1 of 10"),
                               ("scale", 1.5, "scale x1.5, 1 of 10"),
                               ("categorical", 0.0, "categorical 50/30/20 -> 40/30/30")]:
        delays = [delay(change, size, seed) for seed in range(args.seeds)]
        found = sorted(d for d in delays if d is not None and d >= 0)
        row: dict[str, object] = {
            "scenario": name, "found": f"{len(found)}/{args.seeds}",
            "false_before_change": sum(d == -1 for d in delays),
            "median_rows": statistics.median(found) if found else None,
            "p90_rows": found[max(0, math.ceil(0.9 * len(found)) - 1)] if found else None,
            "max_rows": found[-1] if found else None}
        if change == "location":
            row["oracle_median_rows_same_arl"] = oracle_delay(size, arl)
            row["oracle_median_rows_arl_one_week"] = oracle_delay(size, WEEK_ROWS)
        print(json.dumps(row), flush=True)
    print(json.dumps(backtest()), flush=True)
    total = 0
    for seed in range(args.null_seeds):
        result = null_week(seed, args.null_weeks)
        total += int(result["findings"])  # type: ignore[call-overload]
        print(json.dumps(result), flush=True)
    print(json.dumps({"scenario": f"stationary, {args.null_weeks:g} week(s) x "
                                  f"{args.null_seeds} seeds at 10 rows/s",
                      "false_findings": total}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
