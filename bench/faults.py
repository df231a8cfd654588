"""Injected latency faults as tfwarden's predict probe measures them.

Starts `tfwarden devserver` with half_plus_two as versions 1 and 2 of one model, writes
`{"latency": {"fixed_ms": X}}` into version 2's `devserver-faults.json` for each X, and sends
golden requests to both versions alternately, one at a time, with `RestPredictProbe` (the
daemon's own probe code and client-side clock). Prints one JSON line per X with each version's
p50/p99, the shift of the median (v2 - v1) and how far it is from X, the median ratio v2/v1
(what the latency detector estimates), then one line after the fault file is removed.
The tests only check that a fault adds at least X (a sleep never ends early); this is how much
more it adds.

    python bench/faults.py [--fixed-ms 30,80] [--requests 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tfwarden.probes.golden import GoldenRequest
from tfwarden.probes.predict import PredictHttp, RestPredictProbe

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "tests" / "testdata" / "tfserving" / "saved_model_half_plus_two_cpu" / "00000123"
GOLDEN = (GoldenRequest(request={"instances": [2.0]}, expected={"predictions": [3.0]}),)
SETTLE_SECONDS = 0.7  # the devserver re-reads the fault file at most every 0.5 s


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def quantile(samples_ms: list[float], q: float) -> float:
    ordered = sorted(samples_ms)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


async def probe(rest_url: str, requests: int) -> dict[int, list[float]]:
    """``requests`` probe calls to each version, alternating; latency in ms per version."""
    latencies: dict[int, list[float]] = {1: [], 2: []}
    client = PredictHttp()
    try:
        probes = {v: RestPredictProbe(client, rest_url, "m", version=v, golden=GOLDEN,
                                      timeout_seconds=10) for v in latencies}
        for _ in range(requests):
            for version, one in probes.items():
                sample = await one.send()
                if not sample.ok:
                    raise SystemExit(f"version {version}: {sample.labels}")
                latencies[version].append(sample.value)
    finally:
        await client.close()
    return latencies


def measure(rest_url: str, fault: Path, fixed_ms: float | None, requests: int) -> dict[str, object]:
    if fixed_ms is None:
        fault.unlink(missing_ok=True)
    else:
        fault.write_text(json.dumps({"latency": {"fixed_ms": fixed_ms}}))
    time.sleep(SETTLE_SECONDS)
    asyncio.run(probe(rest_url, 5))  # the first calls after the change pick the file up
    latencies = asyncio.run(probe(rest_url, requests))
    v1, v2 = (statistics.median(latencies[v]) for v in (1, 2))
    shift = v2 - v1
    return {"fixed_ms": fixed_ms, "requests": requests,
            "v1_p50_ms": quantile(latencies[1], 0.5), "v1_p99_ms": quantile(latencies[1], 0.99),
            "v2_p50_ms": quantile(latencies[2], 0.5), "v2_p99_ms": quantile(latencies[2], 0.99),
            "v2_min_ms": round(min(latencies[2]), 3), "median_shift_ms": round(shift, 3),
            "shift_minus_fixed_ms": None if fixed_ms is None else round(shift - fixed_ms, 3),
            "median_ratio": round(v2 / v1, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixed-ms", default="30,80", help="comma-separated delays to inject")
    parser.add_argument("--requests", type=int, default=200, help="per version and delay")
    args = parser.parse_args()
    rest_port, grpc_port = free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base = work / "m"
        for version in (1, 2):
            shutil.copytree(MODEL, base / str(version))
        config = work / "models.config"
        config.write_text(f'model_config_list {{ config {{ name: "m" base_path: "{base}" '
                          'model_platform: "tensorflow" '
                          'model_version_policy { specific { versions: 1 versions: 2 } } } }')
        log_path = work / "devserver.log"
        log = open(log_path, "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "tfwarden.daemon", "devserver", f"--port={grpc_port}",
             f"--rest_api_port={rest_port}", f"--model_config_file={config}"],
            stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 90
            while "Exporting HTTP/REST API" not in log_path.read_text():
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("devserver did not start")
                time.sleep(0.1)
            print(json.dumps({"machine": platform.machine(), "python": platform.python_version(),
                              "cores": len(os.sched_getaffinity(0))}))
            rest_url = f"http://127.0.0.1:{rest_port}"
            fault = base / "2" / "devserver-faults.json"
            asyncio.run(probe(rest_url, 50))  # warm-up
            for fixed_ms in [float(x) for x in args.fixed_ms.split(",")] + [None]:
                print(json.dumps(measure(rest_url, fault, fixed_ms, args.requests)), flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=15)
            log.close()


if __name__ == "__main__":
    main()
