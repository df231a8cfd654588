"""Label-free accuracy estimation (CBPE, ``detectors.performance``) against held-back labels.

Two seeded worlds, each a Gaussian mixture whose classes have different covariances (the true
P(y|x) is quadratic) and a linear softmax model trained on it, then made overconfident (logits
x2.5, as a network trained to a low loss often is), so calibration matters:

- ``multiclass``: 4 classes in 4 dimensions, the model outputs 4 softmax columns;
- ``binary``: 2 classes in 3 dimensions, the model outputs one sigmoid column P(class 1).

Per seed: a labelled reference of 2,000 rows (the calibrator and the reference accuracy), then
live windows of 200 / 500 / 1,000 / 5,000 rows whose labels are held back:

- covariate shift (P(x) changes, P(y|x) does not): inputs resampled toward hard rows (worse),
  toward easy rows (better), or along a direction of the input space (either way);
- prior shift: class frequencies change (P(x|y) stays; strictly P(y|x) changes too);
- concept shift (the known failure): for half of the input space, class 0 and 1 labels swap
  with some probability; the model's probabilities, hence the estimate, do not move.

For each window: the realized accuracy (labels), the CBPE estimate with its interval, the same
without labels (raw probabilities assumed calibrated), and the ``performance`` finding's
verdict against the truth "population accuracy under this shift dropped by more than the
tolerance" (computed from the true P(y|x) on 200,000 rows).

    python bench/cbpe.py [--seeds 60]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tfwarden.detectors.performance import CbpeReference, top_class  # noqa: E402
from tfwarden.detectors.performance_settings import (  # noqa: E402
    PerformanceSettings,
    performance_finding,
)

SIZES = (200, 500, 1000, 5000)
REFERENCE_ROWS = 2000
POOL_ROWS = 200_000
OVERCONFIDENCE = 2.5


@dataclass
class World:
    name: str
    means: np.ndarray  # [k, d]
    chols: np.ndarray  # [k, d, d]
    priors: np.ndarray  # [k]
    weights: np.ndarray  # model [d + 1, k]
    binary: bool

    @property
    def classes(self) -> int:
        return len(self.priors)

    def sample(self, rng: np.random.Generator, n: int,
               priors: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        y = rng.choice(self.classes, size=n, p=self.priors if priors is None else priors)
        z = rng.standard_normal((n, self.means.shape[1]))
        x = self.means[y] + np.einsum("nij,nj->ni", self.chols[y], z)
        return x, y

    def posterior(self, x: np.ndarray, priors: np.ndarray | None = None) -> np.ndarray:
        priors = self.priors if priors is None else priors
        logs = []
        for k in range(self.classes):
            inv = np.linalg.inv(self.chols[k])
            r = (x - self.means[k]) @ inv.T
            logdet = np.sum(np.log(np.abs(np.diag(self.chols[k]))))
            logs.append(np.log(priors[k]) - logdet - 0.5 * np.sum(r * r, axis=1))
        return _softmax(np.stack(logs, axis=1))

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """The deployed model's output: softmax columns, or P(class 1) for the binary one."""
        logits = OVERCONFIDENCE * (np.hstack([x, np.ones((len(x), 1))]) @ self.weights)
        p = _softmax(logits)
        return p[:, 1:2] if self.binary else p


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def make_world(name: str, classes: int, dims: int, spread: float, seed: int) -> World:
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((classes, dims)) * spread
    chols = np.stack([np.linalg.cholesky(_spd(rng, dims, scale)) for scale in
                      np.linspace(0.6, 1.8, classes)])
    world = World(name, means, chols, np.full(classes, 1.0 / classes),
                  np.zeros((dims + 1, classes)), classes == 2)
    x, y = world.sample(rng, 4000)
    world.weights = _train_softmax(x, y, classes)
    return world


def _spd(rng: np.random.Generator, dims: int, scale: float) -> np.ndarray:
    a = rng.standard_normal((dims, dims)) * 0.3
    return scale * (np.eye(dims) + a @ a.T) / (1 + 0.09 * dims)


def _train_softmax(x: np.ndarray, y: np.ndarray, classes: int) -> np.ndarray:
    """Multinomial logistic regression by gradient descent (small L2)."""
    xb = np.hstack([x, np.ones((len(x), 1))])
    w = np.zeros((xb.shape[1], classes))
    onehot = np.eye(classes)[y]
    for _ in range(500):
        grad = xb.T @ (_softmax(xb @ w) - onehot) / len(x) + 1e-3 * w
        w -= 0.5 * grad
    return w


# -- scenarios ----------------------------------------------------------------------------------
@dataclass
class Pool:
    """A large sample of the reference distribution, resampled to make covariate shifts."""

    x: np.ndarray
    posterior: np.ndarray
    probabilities: np.ndarray
    predicted: np.ndarray
    right: np.ndarray  # true P(predicted class is right | x)


def make_pool(world: World, rng: np.random.Generator) -> Pool:
    x, _ = world.sample(rng, POOL_ROWS)
    posterior = world.posterior(x)
    probabilities = world.probabilities(x)
    predicted, _ = top_class(probabilities)
    return Pool(x, posterior, probabilities, predicted, posterior[np.arange(len(x)), predicted])


@dataclass
class Scenario:
    family: str  # covariate: none/boundary/confident/direction; hidden: harder/easier;
    # prior: prior_hardest/prior_easiest; concept
    strength: float
    truth_accuracy: float  # population accuracy under the shift (true P(y|x))
    cdf: np.ndarray | None = None  # resampling of the pool (covariate shifts)
    priors: np.ndarray | None = None
    swap: float = 0.0

    @property
    def kind(self) -> str:
        if self.family.startswith("prior"):
            return "prior"
        return {"harder": "hidden", "easier": "hidden"}.get(
            self.family, "concept" if self.family == "concept" else "covariate")


def scenarios(world: World, pool: Pool, rng: np.random.Generator) -> list[Scenario]:
    out: list[Scenario] = []
    top = pool.posterior.max(axis=1)
    direction = rng.standard_normal(pool.x.shape[1])
    direction /= np.linalg.norm(direction)
    along = (pool.x - pool.x.mean(axis=0)) @ direction
    along /= along.std()
    confidence = pool.probabilities.max(axis=1) if not world.binary else \
        np.maximum(pool.probabilities[:, 0], 1 - pool.probabilities[:, 0])
    tilts = [("none", 0.0, np.zeros(len(top)))]
    tilts += [("boundary", b, -b * confidence) for b in (3.0, 6.0, 10.0, 15.0)]
    tilts += [("confident", b, b * confidence) for b in (3.0, 6.0)]
    tilts += [("direction", b, b * along) for b in (-1.0, -0.5, 0.5, 1.0)]
    tilts += [("harder", b, -b * top) for b in (2.0, 4.0, 7.0)]
    tilts += [("easier", b, b * top) for b in (3.0, 6.0)]
    for family, strength, log_w in tilts:
        w = np.exp(log_w - log_w.max())
        w /= w.sum()
        out.append(Scenario(family, strength, float(np.sum(w * pool.right)), cdf=np.cumsum(w)))
    k = world.classes
    truth_class = np.argmax(pool.posterior, axis=1)
    recall = [float(np.mean(pool.predicted[truth_class == c] == c)) for c in range(k)]
    for name, target in (("prior_hardest", int(np.argmin(recall))),
                         ("prior_easiest", int(np.argmax(recall)))):
        for strength in (0.5, 0.75):
            priors = np.full(k, (1 - strength) / (k - 1))
            priors[target] = strength
            out.append(Scenario(name, strength, _truth(world, rng, priors=priors),
                                priors=priors))
    for swap in (0.3, 0.6):
        out.append(Scenario("concept", swap, _truth(world, rng, swap=swap), swap=swap))
    return out


def draw(world: World, pool: Pool, scenario: Scenario, rng: np.random.Generator,
         n: int) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and (held-back) labels of one live window."""
    if scenario.cdf is not None:
        index = np.minimum(np.searchsorted(scenario.cdf, rng.random(n)), len(pool.x) - 1)
        labels = _categorical(rng, pool.posterior[index])
        return pool.probabilities[index], labels
    x, y = world.sample(rng, n, scenario.priors)
    if scenario.swap:
        y = _swap(rng, x, y, scenario.swap)
    return world.probabilities(x), y


def _truth(world: World, rng: np.random.Generator, priors: np.ndarray | None = None,
           swap: float = 0.0) -> float:
    x, y = world.sample(rng, POOL_ROWS, priors)
    if swap:
        y = _swap(rng, x, y, swap)
    predicted, _ = top_class(world.probabilities(x))
    return float(np.mean(predicted == y))


def _swap(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, swap: float) -> np.ndarray:
    """Concept shift: where x[0] > 0, labels 0 and 1 trade places with probability ``swap``."""
    flip = (x[:, 0] > 0) & (y <= 1) & (rng.random(len(y)) < swap)
    y = y.copy()
    y[flip] = 1 - y[flip]
    return y


def _categorical(rng: np.random.Generator, p: np.ndarray) -> np.ndarray:
    return (rng.random((len(p), 1)) > np.cumsum(p, axis=1)).sum(axis=1).clip(0, p.shape[1] - 1)


# -- the run ------------------------------------------------------------------------------------
def run(world: World, seeds: int, settings: PerformanceSettings) -> list[dict[str, Any]]:
    rng = np.random.default_rng(1000 + len(world.name))
    pool = make_pool(world, rng)
    cases = scenarios(world, pool, rng)
    reference_truth = cases[0].truth_accuracy
    records: list[dict[str, Any]] = []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        x, y = world.sample(rng, REFERENCE_ROWS)
        ref_p = world.probabilities(x)
        calibrated = CbpeReference.fit(ref_p, y, seed=seed)
        raw = CbpeReference.fit(ref_p)
        for case in cases:
            for n in SIZES:
                p, labels = draw(world, pool, case, rng, n)
                predicted, _ = top_class(p)
                realized = float(np.mean(predicted == labels))
                est = calibrated.estimate(p, settings.confidence)
                est_raw = raw.estimate(p, settings.confidence)
                verdict = performance_finding(world.name, 2, est, settings, 0.0).verdict
                records.append({
                    "world": world.name, "family": case.family, "kind": case.kind,
                    "strength": case.strength, "rows": n, "seed": seed,
                    "truth": case.truth_accuracy, "reference_truth": reference_truth,
                    "dropped": case.truth_accuracy < reference_truth - settings.tolerance,
                    "realized": realized, "estimate": est["estimated_accuracy"],
                    "low": est["ci_low"], "high": est["ci_high"], "verdict": verdict,
                    "raw": est_raw["estimated_accuracy"], "raw_low": est_raw["ci_low"],
                    "raw_high": est_raw["ci_high"], "calibrator": calibrated.calibrator})
    return records


def summarize(records: list[dict[str, Any]], keys: tuple[str, ...]) -> list[dict[str, Any]]:
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[tuple(r[k] for k in keys)].append(r)
    rows = []
    for key, group in sorted(groups.items(), key=lambda kv: str(kv[0])):
        err = np.array([r["estimate"] - r["realized"] for r in group])
        raw = np.array([r["raw"] - r["realized"] for r in group])
        covered = [r["low"] <= r["realized"] <= r["high"] for r in group]
        raw_covered = [r["raw_low"] <= r["realized"] <= r["raw_high"] for r in group]
        rows.append({**dict(zip(keys, key, strict=True)), "windows": len(group),
                     "truth": round(float(np.mean([r["truth"] for r in group])), 4),
                     "mae": round(float(np.mean(np.abs(err))), 4),
                     "max_error": round(float(np.max(np.abs(err))), 4),
                     "bias": round(float(np.mean(err)), 4),
                     "coverage": round(float(np.mean(covered)), 3),
                     "width": round(float(np.mean([r["high"] - r["low"] for r in group])), 4),
                     "raw_mae": round(float(np.mean(np.abs(raw))), 4),
                     "raw_coverage": round(float(np.mean(raw_covered)), 3)})
    return rows


def verdicts(records: list[dict[str, Any]], keys: tuple[str, ...]) -> list[dict[str, Any]]:
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[tuple(r[k] for k in keys)].append(r)
    rows = []
    for key, group in sorted(groups.items(), key=lambda kv: str(kv[0])):
        flagged = [r for r in group if r["verdict"] == "regression"]
        dropped = [r for r in group if r["dropped"]]
        hits = sum(r["dropped"] for r in flagged)
        rows.append({
            **dict(zip(keys, key, strict=True)), "windows": len(group), "dropped": len(dropped),
            "regression": len(flagged),
            "precision": round(hits / len(flagged), 3) if flagged else None,
            "recall": round(hits / len(dropped), 3) if dropped else None,
            "ok_when_dropped": sum(r["verdict"] == "ok" for r in dropped),
            "inconclusive": round(np.mean([r["verdict"] == "inconclusive" for r in group]), 3)})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=60)
    args = parser.parse_args()
    started = time.monotonic()
    settings = PerformanceSettings()
    print(json.dumps({"machine": f"{os.cpu_count()} cpus", "date": time.strftime("%Y-%m-%d"),
                      "seeds": args.seeds, "tolerance": settings.tolerance}), flush=True)
    worlds = [make_world("multiclass", 4, 4, 2.0, 7), make_world("binary", 2, 3, 0.9, 11)]
    records = [r for world in worlds for r in run(world, args.seeds, settings)]
    cases = summarize(records, ("world", "family", "strength"))
    for row in cases:
        print(json.dumps({"bench": "scenario", **row}), flush=True)
    by_kind = summarize(records, ("kind", "rows"))
    for row in by_kind:
        print(json.dumps({"bench": "estimate", **row}), flush=True)
    covariate = [r for r in records if r["kind"] != "concept"]
    judged = verdicts(covariate, ("kind", "rows"))
    for row in judged:
        print(json.dumps({"bench": "verdict", **row}), flush=True)
    seconds = time.monotonic() - started
    print(json.dumps({"bench": "time", "seconds": round(seconds, 1), "windows": len(records)}))
    print("\nEstimation error against the realized accuracy of each window (all worlds):")
    print(f"{'kind':<10} {'rows':>5} {'MAE':>7} {'max':>7} {'bias':>7} {'cover':>6} {'width':>7}"
          f" | {'raw MAE':>7} {'raw cov':>7}")
    for row in by_kind:
        print(f"{row['kind']:<10} {row['rows']:>5} {row['mae']:>7.4f} {row['max_error']:>7.4f} "
              f"{row['bias']:>7.4f} {row['coverage']:>6.3f} {row['width']:>7.4f} | "
              f"{row['raw_mae']:>7.4f} {row['raw_coverage']:>7.3f}")
    print("\nRegression verdict vs truth (population accuracy dropped > tolerance):")
    for row in judged:
        print(f"{row['kind']:<10} {row['rows']:>5} dropped {row['dropped']:>4} regression "
              f"{row['regression']:>4} precision {row['precision']} recall {row['recall']} "
              f"ok-when-dropped {row['ok_when_dropped']} inconclusive {row['inconclusive']}")
    print(f"\n{len(records)} windows in {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
