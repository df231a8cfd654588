"""Seeded RSS traces with many disturbance shapes, for the memory leak benchmark (bench/leaks.py).

Each seed draws its own components, so no single shape can be tuned to:

- base level 0.6-2 GB; warm-up plateau (ramp over 1-8 min, +20-150 MB) and a cache fill
  (exponential approach, 50-400 MB, 95 % reached after 10-60 min) after every (re)start;
- one or two periodic components: period 1-45 min (log-uniform), amplitude 10-80 MB, shape
  linear sawtooth (GC floor), exponential refill, or sawtooth with +-25 % period jitter per cycle;
- AR(1) noise at 10 s: rho 0.9-0.98, marginal sigma 3-10 MB; heavy-tail upward spikes (0.1 % of
  samples, Pareto, from 20 MB); a load-driven daily cycle (half-amplitude 0-5 MB);
- restarts at random times (level back to base, warm-up and fill again, leak starts over);
- version swaps: load the next version (+100-600 MB over 1-3 min), unload the previous one 10-40
  min later (its memory given back, or, for retention scenarios, 50-100 % of it kept);
- leaks linear from ``onset_h`` (optionally slightly concave: ``concave``).

Output: trace-format dicts (docs/trace-format.md), ``memory`` and ``version`` events.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field

MB = 1024 * 1024
TARGET = "serving-0"


@dataclass(frozen=True)
class LeakScenario:
    hours: float = 12.0
    leak_mb_per_hour: float = 0.0
    onset_h: float | None = None  # None: drawn in [2, 5] h
    headroom_mb: float | None = None  # limit = level at onset + this (else 8 GiB)
    restarts: int | None = None  # None: drawn (0-1 per day)
    swaps: bool = True
    retention: bool = False  # the first swap's unload keeps 50-100 % of the old version
    concave: bool = False
    interval_s: float = 10.0
    seed: int = 0
    t0: float = 1_764_000_000.0


@dataclass
class Components:
    base: float
    warm_mb: float
    warm_s: float
    fill_mb: float
    fill_tau_s: float
    saws: list[tuple[float, float, str]]  # (period s, amplitude MB, shape)
    rho: float
    sigma: float
    daily_mb: float
    daily_phase: float
    onset_s: float
    restarts_s: list[float]
    swaps_s: list[tuple[float, float, float, float]]  # (load t, size MB, unload delay, kept share)
    limit: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)


def draw(s: LeakScenario) -> Components:
    rng = random.Random(s.seed * 7919 + int(s.leak_mb_per_hour * 1000) + (17 if s.retention else 0))
    total = s.hours * 3600
    saws = []
    for _ in range(rng.choice((1, 1, 2))):
        period = 60 * math.exp(rng.uniform(0, math.log(45)))
        saws.append((period, rng.uniform(10, 80), rng.choice(("linear", "refill", "jitter"))))
    onset = 3600 * (s.onset_h if s.onset_h is not None else rng.uniform(2, 5))
    count = s.restarts if s.restarts is not None else rng.randint(0, max(0, int(s.hours / 24)))
    if s.leak_mb_per_hour > 0:  # a restart before the onset only: the leak is then judged
        restarts = sorted(rng.uniform(1800, max(1801, onset - 3600)) for _ in range(count))
    else:
        restarts = sorted(rng.uniform(3600, total - 3600) for _ in range(count))
    swaps = []
    if s.swaps or s.retention:
        t = rng.uniform(1.5, 4) * 3600 if s.retention else rng.uniform(3, 14) * 3600
        while t < total - 3 * 3600:
            kept = rng.uniform(0.5, 1.0) if s.retention and not swaps else 0.0
            swaps.append((t, rng.uniform(100, 600), rng.uniform(600, 2400), kept))
            t += rng.uniform(8, 20) * 3600
    return Components(
        base=rng.uniform(600, 2000), warm_mb=rng.uniform(20, 150), warm_s=rng.uniform(60, 480),
        fill_mb=rng.uniform(50, 400), fill_tau_s=rng.uniform(600, 3600) / 3, saws=saws,
        rho=rng.uniform(0.9, 0.98), sigma=rng.uniform(3, 10), daily_mb=rng.uniform(0, 5),
        daily_phase=rng.uniform(0, 2 * math.pi), onset_s=onset, restarts_s=restarts,
        swaps_s=swaps)


def _saw(phase: float, shape: str) -> float:
    """0..1 over one cycle: a linear climb, or an exponential refill, then the drop."""
    if shape == "refill":
        return (1 - math.exp(-4 * phase)) / (1 - math.exp(-4))
    return phase


def leak_trace(s: LeakScenario, c: Components | None = None) -> Iterator[dict[str, object]]:
    """The trace of ``s`` (components drawn from its seed unless given)."""
    c = c or draw(s)
    rng = random.Random(s.seed * 104729 + 3)
    n = int(s.hours * 3600 / s.interval_s)
    innovation = c.sigma * math.sqrt(1 - c.rho * c.rho)
    noise = rng.gauss(0, c.sigma)
    started = 0.0
    restarts = list(c.restarts_s)
    # per component: (cycle start, cycle length) with jitter
    cycles = [[rng.uniform(-p, 0), p] for p, _, _ in c.saws]
    # versions: v1 loaded at 1 h; each swap loads v+1 and later unloads v
    events = [(3600.0, "loaded", 1, rng.uniform(100, 600), 0.0)]  # v1: its load is seen
    for i, (t_load, size, delay, kept) in enumerate(c.swaps_s):
        events.append((t_load, "loaded", i + 2, size, 0.0))
        events.append((t_load + delay, "unloaded", i + 1, -1.0, kept))
    events.sort()
    sizes: dict[int, float] = {}
    loaded: list[tuple[float, float, float]] = []  # (t, delta MB, ramp s)
    limit = c.limit or 8 * 1024 * MB
    onset_level = None
    for k in range(n):
        elapsed = k * s.interval_s
        t = s.t0 + elapsed
        while events and events[0][0] <= elapsed:
            t_ev, state, version, size, kept = events.pop(0)
            if state == "loaded":
                sizes[version] = size
                loaded.append((t_ev, size, rng.uniform(60, 180)))
            else:
                loaded.append((t_ev, -sizes.pop(version, 0.0) * (1 - kept), 60.0))
            yield {"t": t + 0.001, "type": "version", "target": TARGET, "model": "m",
                   "version": version, "state": state}
        if restarts and elapsed >= restarts[0]:
            started = restarts.pop(0)
            loaded = [(started, sum(sizes.values()), 1.0)]  # versions reloaded at start
        since = elapsed - started
        mb = c.base + c.warm_mb * min(1.0, since / c.warm_s)
        mb += c.fill_mb * (1 - math.exp(-since / c.fill_tau_s))
        for j, (period, amplitude, shape) in enumerate(c.saws):
            start, length = cycles[j]
            while elapsed >= start + length:
                start += length
                length = period * (rng.uniform(0.75, 1.25) if shape == "jitter" else 1.0)
            cycles[j] = [start, length]
            mb += amplitude * _saw((elapsed - start) / length, shape)
        mb += c.daily_mb * math.sin(2 * math.pi * elapsed / 86400 + c.daily_phase)
        for t_ev, delta, ramp in loaded:
            if t_ev >= started:
                mb += delta * min(1.0, (elapsed - t_ev) / ramp)
        noise = c.rho * noise + rng.gauss(0, innovation)
        mb += noise
        if rng.random() < 0.001:
            mb += 20 * rng.paretovariate(1.5)
        if s.leak_mb_per_hour > 0 and elapsed >= c.onset_s:
            if onset_level is None:
                onset_level = mb - noise
                if s.headroom_mb is not None:
                    limit = (onset_level + s.headroom_mb) * MB
            hours = (elapsed - max(c.onset_s, started)) / 3600
            mb += s.leak_mb_per_hour * (2 * math.sqrt(hours + 1) - 2 if s.concave else hours)
        yield {"t": t, "type": "memory", "target": TARGET, "rss_bytes": int(mb * MB),
               "limit_bytes": int(limit)}


def floor_hours(leak_mb_per_hour: float, sigma_mb: float = 5.0, rho: float = 0.0,
                interval_s: float = 10.0, z: float = 3.09 + 1.28) -> float:
    """reference/detection.md: T = [(z_a+z_b) sigma sqrt(12 dt) / b]^(2/3), with sigma the
    long-run sd (sigma sqrt((1+rho)/(1-rho))) when ``rho`` is given."""
    long_run = sigma_mb * math.sqrt((1 + rho) / (1 - rho))
    return (z * long_run * math.sqrt(12 * interval_s / 3600) / leak_mb_per_hour) ** (2 / 3)
