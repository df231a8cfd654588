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
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from capture import build_model, free_port, wait_http
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
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        build_model(work / "models" / "m" / "1")
        grpc_port, rest_port, port = free_port(), free_port(), free_port()
        dev = subprocess.Popen([sys.executable, "-m", "tfwarden.daemon", "devserver",
                                f"--port={grpc_port}", f"--rest_api_port={rest_port}",
                                "--model_name=m", f"--model_base_path={work / 'models' / 'm'}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        np.save(work / "reference.npy", np.random.default_rng(0).normal(size=(2000, 10)))
        (work / "golden.jsonl").write_text(json.dumps({"request": {"instances": [[0.0] * 10]}})
                                           + "\n")
        (work / "tfwarden.yaml").write_text(f"""
server: {{listen: "127.0.0.1:{port}"}}
state_dir: ./state
serving:
  dev: {{kind: tfserving, rest_url: "http://127.0.0.1:{rest_port}",
         grpc_address: "127.0.0.1:{grpc_port}"}}
models:
  - name: m
    serving: dev
    golden_requests: golden.jsonl
    probe: {{rate_per_second: {args.probe_rate}}}
    drift: {{engine: scipy, reference: reference.npy, interval_seconds: 3600,
             outputs: {{enabled: false}}}}
capture: {{client_rows_per_second: 1000000, reservoir_rows: 5000, recent_rows: 20000,
           max_body_bytes: 8000000}}
""")
        daemon = subprocess.Popen([sys.executable, "-m", "tfwarden.daemon", "run", "--config",
                                   str(work / "tfwarden.yaml")], cwd=work,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_http(f"http://127.0.0.1:{rest_port}/v1/models/m")
            wait_http(f"{base}/-/ready")
            rng = np.random.default_rng(1)
            bodies = [json.dumps({"features": [f"x[{i}]" for i in range(10)],
                                  "rows": rng.normal(size=(args.batch, 10)).round(6).tolist()})
                      .encode() for _ in range(10)]
            for _ in range(100):  # warm-up: the signature is read on the first call
                if httpx.post(f"{base}/api/v1/samples/m", content=bodies[0],
                              timeout=30).status_code == 200:
                    break
                time.sleep(0.2)
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
        finally:
            daemon.terminate()
            dev.terminate()
            daemon.wait(10)
            dev.wait(10)
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
