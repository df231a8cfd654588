"""Seeded synthetic traces in the `tfwarden backtest` format (docs/trace-format.md).

Latency: lognormal (sigma 0.5 in log space, median 20 ms) with rare heavy-tail spikes (0.2 % of
requests x5-20); a canary may carry a median factor, a p99-only tail (extra spikes) and an error
rate. Memory: warm-up ramp then plateau, GC sawtooth, AR(1) noise, optional linear leak, optional
restart.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class CanaryScenario:
    seconds: float = 600.0
    rate_hz: float = 10.0
    median_ms: float = 20.0
    sigma: float = 0.5
    spike_rate: float = 0.002
    canary_factor: float = 1.0
    canary_tail_rate: float = 0.0
    canary_tail_factor: float = 8.0
    stable_error_rate: float = 0.001
    canary_error_rate: float = 0.001
    fault_at: float = 0.0
    seed: int = 0
    t0: float = 1_764_000_000.0


def latency_trace(s: CanaryScenario) -> Iterator[dict[str, object]]:
    """Stable version 1 and canary version 2 probed at ``rate_hz`` each; the canary's
    regression starts ``fault_at`` seconds in."""
    rng = random.Random(s.seed)
    yield {"t": s.t0, "type": "deploy", "model": "m", "version": 1, "role": "stable"}
    yield {"t": s.t0 + 0.001, "type": "deploy", "model": "m", "version": 2, "role": "canary"}
    n = int(s.seconds * s.rate_hz)
    for i in range(n):
        base_t = s.t0 + 0.01 + i / s.rate_hz
        load = 1.0 + 0.3 * math.sin(2 * math.pi * i / (s.rate_hz * 300))  # shared load swings
        for version in (1, 2):
            t = base_t + rng.uniform(0, 0.5 / s.rate_hz)
            faulty = version == 2 and t - s.t0 >= s.fault_at
            ms = s.median_ms * load * math.exp(rng.gauss(0, s.sigma))
            if rng.random() < s.spike_rate:
                ms *= rng.uniform(5, 20)
            if faulty:
                ms *= s.canary_factor
                if rng.random() < s.canary_tail_rate:
                    ms *= s.canary_tail_factor
            error_rate = s.canary_error_rate if faulty else s.stable_error_rate
            ok = rng.random() >= error_rate
            yield {"t": round(t, 4), "type": "latency", "model": "m", "version": version,
                   "ms": round(ms, 3), "ok": ok}


@dataclass(frozen=True)
class MemoryScenario:
    hours: float = 24.0
    interval_s: float = 10.0
    base_mb: float = 800.0
    warmup_mb: float = 200.0
    warmup_minutes: float = 10.0
    sawtooth_mb: float = 30.0
    sawtooth_period_s: float = 180.0
    noise_mb: float = 5.0
    rho: float = 0.9
    leak_mb_per_hour: float = 0.0
    leak_starts_h: float = 0.0
    restart_at_h: float | None = None
    limit_bytes: int = 4 * 1024**3
    seed: int = 0
    t0: float = 1_764_000_000.0


def memory_trace(s: MemoryScenario) -> Iterator[dict[str, object]]:
    rng = random.Random(s.seed)
    noise = 0.0
    start = 0.0
    n = int(s.hours * 3600 / s.interval_s)
    innovation = s.noise_mb * math.sqrt(1 - s.rho * s.rho)
    for i in range(n):
        elapsed = i * s.interval_s
        if s.restart_at_h is not None and start == 0.0 and elapsed >= s.restart_at_h * 3600:
            start = elapsed
        since = elapsed - start
        warm = s.warmup_mb * min(1.0, since / (s.warmup_minutes * 60))
        saw = s.sawtooth_mb * ((since % s.sawtooth_period_s) / s.sawtooth_period_s)
        noise = s.rho * noise + rng.gauss(0, innovation)
        leak_h = max(0.0, since / 3600 - s.leak_starts_h)
        mb = s.base_mb + warm + saw + noise + s.leak_mb_per_hour * leak_h
        yield {"t": s.t0 + elapsed, "type": "memory", "target": "serving-0",
               "rss_bytes": int(mb * 1024 * 1024), "limit_bytes": s.limit_bytes}


def write(path: str, events: Iterator[dict[str, object]]) -> int:
    count = 0
    with open(path, "w") as handle:
        for event in events:
            handle.write(json.dumps(event) + "\n")
            count += 1
    return count
