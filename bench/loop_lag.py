"""Event-loop lag under capture load, and whether probes keep their schedule meanwhile.

The capture benchmark's set-up (bench/capture.py: a [-1, 10] float model on the devserver, drift
configured so rows also fill the drift buffer) plus a predict probe at ``--probe-rate``/s. Two
clients post batches of rows to ``POST /api/v1/samples/m`` for ``--seconds`` at ``--rate``
rows/s in all (default: the rate bench/capture.py measured, about 20,000 rows/s; 0: as fast as
the daemon takes them). The daemon's own ``tfwarden_event_loop_lag_seconds`` (sampled every
0.1 s) and ``tfwarden_probe_requests_total`` are read before and after. Reports the loop lag
p50/p99 (interpolated inside the histogram's buckets) and the share of samples at most 50 ms,
probe requests sent against the schedule, and accepted rows/s. Goal (issue 11): p99 <= 50 ms and
probes on schedule.

    python bench/loop_lag.py [--seconds 30] [--rate 20000] [--batch 1000] [--clients 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from capture import sample_bodies, stack, warm_up
from prometheus_client.parser import text_string_to_metric_families


def scrape(url: str) -> tuple[dict[float, float], float]:
    """(loop-lag histogram buckets le -> cumulative count, probe requests sent)."""
    buckets: dict[float, float] = {}
    probes = 0.0
    for family in text_string_to_metric_families(httpx.get(url, timeout=10).text):
        for sample in family.samples:
            if sample.name == "tfwarden_event_loop_lag_seconds_bucket":
                buckets[float(sample.labels["le"])] = sample.value
            elif sample.name == "tfwarden_probe_requests_total":
                probes += sample.value
    return buckets, probes


def quantile(buckets: dict[float, float], q: float) -> float:
    """Prometheus' histogram_quantile: linear inside the bucket that holds the rank."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    rank, lower, below = q * total, 0.0, 0.0
    for bound in bounds:
        if buckets[bound] >= rank:
            if bound == float("inf"):
                return lower
            inside = buckets[bound] - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 0)
        lower, below = bound, buckets[bound]
    return lower


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--rate", type=float, default=20_000, help="rows/s in all; 0: unpaced")
    parser.add_argument("--probe-rate", type=float, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, \
            stack(Path(tmp), probe_rate=args.probe_rate) as (_, port):
        base = f"http://127.0.0.1:{port}"
        bodies = sample_bodies(args.batch, 10)
        with httpx.Client(base_url=base, timeout=30) as client:
            warm_up(client, bodies[0])
        time.sleep(3)  # the probe reaches its rate
        lag_before, probes_before = scrape(f"{base}/metrics")
        stop, rows = threading.Event(), [0] * args.clients

        def post(index: int) -> None:
            with httpx.Client(base_url=base, timeout=30,
                              headers={"content-type": "application/json"}) as client:
                interval = args.batch * args.clients / args.rate if args.rate else 0.0
                due = time.monotonic()
                while not stop.is_set():
                    answer = client.post("/api/v1/samples/m", content=bodies[rows[index] % 10])
                    assert answer.status_code == 200, answer.text
                    rows[index] += args.batch
                    due += interval
                    time.sleep(max(0.0, due - time.monotonic()))

        threads = [threading.Thread(target=post, args=(i,)) for i in range(args.clients)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        time.sleep(args.seconds)
        stop.set()
        for thread in threads:
            thread.join()
        wall = time.monotonic() - started
        lag_after, probes_after = scrape(f"{base}/metrics")
    lag = {le: lag_after[le] - lag_before.get(le, 0.0) for le in lag_after}
    samples = lag[float("inf")]
    result = {
        "seconds": round(wall, 1), "clients": args.clients, "batch_rows": args.batch,
        "target_rows_per_second": args.rate or "unpaced",
        "body_bytes": len(bodies[0]), "rows_per_second": round(sum(rows) / wall),
        "loop_lag_samples": int(samples),
        "loop_lag_p50_ms": round(quantile(lag, 0.5) * 1000, 1),
        "loop_lag_p99_ms": round(quantile(lag, 0.99) * 1000, 1),
        "share_at_most_50ms": round(lag[0.05] / samples, 4) if samples else None,
        "probe_requests": int(probes_after - probes_before),
        "probe_requests_scheduled": int(args.probe_rate * wall),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus",
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
