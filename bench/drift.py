"""Drift detection on seeded data: batch power, false findings per week, online delay, worker cost.

1. Batch power: reference 2,000 x 10 standard normal features (plus one categorical feature for
   the frequency case); shifted batches of 200/400/800 rows; share of batches where the shifted
   feature is flagged (scipy engine; alibi-detect's p-values are the same tests, see the tests).
2. False findings: stationary traffic through the finding rule (``consecutive`` drifted windows
   of ``window_rows``), over many references; reported per simulated week of 12,096 windows
   (a week at 10 captured rows/s with 500-row windows).
3. Finding delay: rows of shifted traffic until the finding says regression, for the default
   rule (p 0.01, two windows of 500 rows) and an alternative (p 0.05, three windows).
4. Online: CVMDriftOnline at an ERT with multi-scale windows, mean detection delay after a 1 and
   a 0.5 sigma shift, next to the oracle CUSUM (known shift size) calibrated to the same ERT.
5. Worker: RSS of the drift worker with each engine; calibration time of the online detector.

    python bench/drift.py [--trials 200] [--weeks 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tfwarden.core import framing  # noqa: E402
from tfwarden.detectors.drift.engines import OnlineDrift, ScipyEngine  # noqa: E402
from tfwarden.detectors.drift.reference import Reference  # noqa: E402
from tfwarden.detectors.drift.settings import BatchSettings, OnlineSettings  # noqa: E402

WEEK_WINDOWS = 12_096


def reference(rng: np.random.Generator, categorical: bool = False) -> Reference:
    data: list[list[float | str]] = rng.normal(size=(2000, 10)).tolist()
    if categorical:
        colors = rng.choice(["a", "b", "c"], size=2000, p=[0.5, 0.3, 0.2])
        data = [[*row, str(c)] for row, c in zip(data, colors, strict=True)]
        return Reference.from_rows(data, [f"f{i}" for i in range(10)] + ["color"])
    return Reference.from_rows(data, [f"f{i}" for i in range(10)])


def batch_power(trials: int, p_value: float) -> list[dict[str, object]]:
    rng = np.random.default_rng(0)
    rows_out = []
    scenarios = {
        "location 0.25 sigma, 1 of 10 features": lambda b: _shift(b, 0.25, 1.0, rng),
        "location 0.5 sigma, 1 of 10 features": lambda b: _shift(b, 0.5, 1.0, rng),
        "location 1 sigma in 10 % of rows": lambda b: _shift(b, 1.0, 0.1, rng),
        "scale x1.5, 1 of 10 features": lambda b: _scale(b, 1.5),
        "categorical 50/30/20 -> 40/30/30": None,
    }
    for name, change in scenarios.items():
        for n in (200, 400, 800):
            hits = 0
            for _ in range(trials):
                cat = change is None
                ref = reference(rng, categorical=cat)
                engine = ScipyEngine(ref, BatchSettings(p_value=p_value))
                batch = rng.normal(size=(n, 10))
                if cat:
                    colors = rng.choice(["a", "b", "c"], size=n, p=[0.4, 0.3, 0.3])
                    encoded = ref.encode([[*r, str(c)] for r, c in zip(batch.tolist(), colors,
                                                                        strict=True)])
                    report = engine.check(encoded)
                    hits += "color" in report["drifted_features"]
                else:
                    report = engine.check(change(batch))
                    hits += "f3" in report["drifted_features"]
            rows_out.append({"scenario": name, "rows": n, "power": round(hits / trials, 3)})
    return rows_out


def _shift(batch: np.ndarray, sigma: float, share: float, rng: np.random.Generator) -> np.ndarray:
    affected = rng.random(len(batch)) < share
    batch[affected, 3] += sigma
    return batch


def _scale(batch: np.ndarray, factor: float) -> np.ndarray:
    batch[:, 3] *= factor
    return batch


def false_findings(weeks: float, references: int = 24) -> list[dict[str, object]]:
    """Adjusted p-values of stationary windows, then the finding rule for several settings."""
    rng = np.random.default_rng(1)
    windows_per_ref = int(WEEK_WINDOWS * weeks / references)
    minimum = []  # per window: the smallest adjusted p-value (drift iff <= alpha)
    for _ in range(references):
        engine = ScipyEngine(reference(rng), BatchSettings(p_value=0.05))
        run = [min(f["p_adjusted"] for f in engine.check(rng.normal(size=(500, 10)))["features"])
               for _ in range(windows_per_ref)]
        minimum.append(np.array(run))
    out = []
    for alpha in (0.05, 0.01, 0.005, 0.001):
        for need in (1, 2, 3):
            findings = 0
            for run in minimum:
                streak = 0
                for p in run:
                    streak = streak + 1 if p <= alpha else 0
                    findings += streak == need  # a transition to regression
            out.append({"p_value": alpha, "consecutive": need,
                        "false_findings_per_week": round(findings / weeks, 2)})
    return out


def online_delay(trials: int, cache: Path) -> list[dict[str, object]]:
    rng = np.random.default_rng(2)
    ert, windows, n_ref = 500, (2, 5, 10, 20), 500
    ref = Reference.from_rows(rng.normal(size=(n_ref, 1)).tolist(), ["x"])
    settings = OnlineSettings(ert=ert, window_sizes=windows, n_bootstraps=20_000)
    online = OnlineDrift(ref, settings, cache)
    started = time.monotonic()
    online.build()
    calibration = time.monotonic() - started
    detector = online.detectors["cvm"][1]
    false_runs = []
    for _ in range(trials):  # run length under the null (checks the ERT), capped at 5 ERT
        detector.reset_state()
        t = 0
        while t < 5 * ert:
            t += 1
            if detector.predict(rng.normal(size=1))["data"]["is_drift"]:
                break
        false_runs.append(t)
    out = []
    for shift in (1.0, 0.5):
        delays = []
        for _ in range(trials):
            detector.reset_state()
            t = 0
            while True:
                t += 1
                if detector.predict(rng.normal(size=1) + shift)["data"]["is_drift"]:
                    break
            delays.append(t)
        h = _cusum_threshold(ert, shift, rng)
        cusum = [_cusum_run(h, shift, shift, rng) for _ in range(2000)]
        out.append({"ert_rows": ert, "window_sizes": list(windows), "reference_rows": n_ref,
                    "shift_sigma": shift, "cvm_mean_delay_rows": round(float(np.mean(delays)), 1),
                    "cusum_optimum_delay_rows": round(float(np.mean(cusum)), 1),
                    "ratio": round(float(np.mean(delays) / np.mean(cusum)), 2),
                    "cvm_mean_null_run_rows_capped_5ert": round(float(np.mean(false_runs)), 1),
                    "calibration_seconds_20k_bootstraps": round(calibration, 1)})
    return out


def _cusum_run(h: float, delta: float, mean: float, rng: np.random.Generator,
               cap: int = 100_000) -> int:
    """Oracle CUSUM for N(0,1) -> N(delta,1) on data with the given mean: rows to alarm."""
    s, t = 0.0, 0
    while t < cap:
        t += 1
        s = max(0.0, s + delta * (rng.normal() + mean - delta / 2))
        if s > h:
            return t
    return t


def _cusum_threshold(ert: int, delta: float, rng: np.random.Generator) -> float:
    low, high = 0.1, 20.0
    for _ in range(16):
        h = (low + high) / 2
        arl = np.mean([_cusum_run(h, delta, 0.0, rng, cap=20 * ert) for _ in range(400)])
        low, high = (h, high) if arl < ert else (low, h)
    return (low + high) / 2


def finding_delay(trials: int, p_value: float, need: int, window: int) -> list[dict[str, object]]:
    """Rows of shifted traffic until the finding says regression (the daemon's rule)."""
    rng = np.random.default_rng(4)
    out = []
    for shift in (0.25, 0.5):
        rows = []
        for _ in range(trials):
            engine = ScipyEngine(reference(rng), BatchSettings(p_value=p_value))
            streak, seen = 0, 0
            while streak < need and seen < 40 * window:
                batch = rng.normal(size=(window, 10))
                batch[:, 3] += shift
                seen += window
                streak = streak + 1 if engine.check(batch)["drift"] else 0
            rows.append(seen)
        out.append({"shift_sigma": shift, "p_value": p_value, "consecutive": need,
                    "window_rows": window, "median_rows": int(np.median(rows)),
                    "p90_rows": int(np.quantile(rows, 0.9))})
    return out


def worker_rss(engine: str, state: Path) -> dict[str, object]:
    proc = subprocess.Popen([sys.executable, "-m", "tfwarden.detectors.drift.worker", "--state-dir",
                             str(state)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    assert proc.stdin is not None and proc.stdout is not None
    rng = np.random.default_rng(3)

    def ask(message: dict[str, object]) -> dict[str, object]:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(framing.encode(message))
        proc.stdin.flush()
        reply = framing.read(proc.stdout)
        assert reply is not None and "error" not in reply, reply
        return reply

    started = time.monotonic()
    ask({"op": "configure", "model": "m", "engine": engine, "features":
         [f"f{i}" for i in range(10)], "reference": {"rows": rng.normal(size=(2000, 10)).tolist()},
         "batch": {}})
    configure = time.monotonic() - started
    timings = []
    for _ in range(20):
        timings.append(ask({"op": "check", "model": "m",
                            "rows": rng.normal(size=(500, 10)).tolist()})["seconds"])
    stats = ask({"op": "stats"})
    proc.stdin.close()
    proc.wait(10)
    return {"engine": engine, "rss_mb": round(int(stats["rss_bytes"]) / 2**20, 1),  # type: ignore[call-overload]
            "configure_seconds": round(configure, 2),
            "check_ms_500x10": round(1000 * float(np.median(timings)), 2)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--weeks", type=float, default=1.0)
    args = parser.parse_args()
    print(json.dumps({"machine": f"{os.cpu_count()} cpus", "date": time.strftime("%Y-%m-%d")}))
    for p_value in (0.05, 0.01):
        for row in batch_power(args.trials, p_value):
            print(json.dumps({"bench": "batch_power", "p_value": p_value, **row}), flush=True)
    for row in false_findings(args.weeks):
        print(json.dumps({"bench": "false_findings", **row}), flush=True)
    for p_value, need in ((0.01, 2), (0.05, 3)):
        for row in finding_delay(min(args.trials, 100), p_value, need, 500):
            print(json.dumps({"bench": "finding_delay", **row}), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for row in online_delay(min(args.trials, 100), Path(tmp)):
            print(json.dumps({"bench": "online", **row}), flush=True)
        for engine in ("scipy", "alibi"):
            print(json.dumps({"bench": "worker", **worker_rss(engine, Path(tmp))}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
