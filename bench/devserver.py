"""devserver latency and throughput for half_plus_two over REST and gRPC.

Starts `tfwarden devserver` on free loopback ports and drives it from this process:
- sequential: one request at a time (the server's own latency floor and noise),
- concurrent: C clients in closed loop for D seconds (throughput; note the load generator
  shares the machine's cores with the server).
Prints one JSON line per scenario with p50/p90/p99 latency (ms) and requests/s.

    python bench/devserver.py [--seconds 5] [--concurrency 8] [--sequential 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "tests" / "testdata" / "tfserving" / "saved_model_half_plus_two_cpu"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def quantiles(samples_ms: list[float]) -> dict[str, float]:
    ordered = sorted(samples_ms)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"p50_ms": round(pick(0.5), 3), "p90_ms": round(pick(0.9), 3),
            "p99_ms": round(pick(0.99), 3), "mean_ms": round(statistics.fmean(ordered), 3)}


def grpc_request():  # type: ignore[no-untyped-def]
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus_two"
    tensor = request.inputs["x"]
    tensor.dtype = 1
    tensor.tensor_shape.dim.add().size = 1
    tensor.float_val.append(2.0)
    return request


def sequential_rest(url: str, n: int) -> dict[str, object]:
    samples = []
    with httpx.Client(timeout=10) as client:
        for _ in range(n):
            start = time.perf_counter()
            response = client.post(url, json={"instances": [2.0]})
            samples.append((time.perf_counter() - start) * 1000)
            assert response.status_code == 200
    return {"scenario": "rest-sequential", "requests": n, **quantiles(samples)}


def sequential_grpc(address: str, n: int) -> dict[str, object]:
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    request = grpc_request()
    samples = []
    with grpc.insecure_channel(address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for _ in range(n):
            start = time.perf_counter()
            stub.Predict(request, timeout=10)
            samples.append((time.perf_counter() - start) * 1000)
    return {"scenario": "grpc-sequential", "requests": n, **quantiles(samples)}


def concurrent_rest(url: str, concurrency: int, seconds: float) -> dict[str, object]:
    samples: list[float] = []
    errors = 0

    async def worker(client: httpx.AsyncClient, end: float) -> None:
        nonlocal errors
        while time.perf_counter() < end:
            start = time.perf_counter()
            response = await client.post(url, json={"instances": [2.0]})
            samples.append((time.perf_counter() - start) * 1000)
            errors += response.status_code != 200

    async def run() -> float:
        limits = httpx.Limits(max_connections=concurrency)
        async with httpx.AsyncClient(timeout=10, limits=limits) as client:
            start = time.perf_counter()
            await asyncio.gather(*(worker(client, start + seconds) for _ in range(concurrency)))
            return time.perf_counter() - start

    elapsed = asyncio.run(run())
    return {"scenario": f"rest-concurrent-{concurrency}", "requests": len(samples),
            "errors": errors, "rps": round(len(samples) / elapsed, 1), **quantiles(samples)}


def concurrent_grpc(address: str, concurrency: int, seconds: float) -> dict[str, object]:
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    request = grpc_request()
    samples: list[float] = []
    lock = threading.Lock()
    with grpc.insecure_channel(address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        end = time.perf_counter() + seconds

        def worker() -> None:
            local = []
            while time.perf_counter() < end:
                start = time.perf_counter()
                stub.Predict(request, timeout=10)
                local.append((time.perf_counter() - start) * 1000)
            with lock:
                samples.extend(local)

        started = time.perf_counter()
        threads = [threading.Thread(target=worker) for _ in range(concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - started
    return {"scenario": f"grpc-concurrent-{concurrency}", "requests": len(samples),
            "rps": round(len(samples) / elapsed, 1), **quantiles(samples)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--sequential", type=int, default=300)
    args = parser.parse_args()
    rest_port, grpc_port = free_port(), free_port()
    with tempfile.TemporaryDirectory() as work:
        log = open(Path(work) / "devserver.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "tfwarden.daemon", "devserver", f"--port={grpc_port}",
             f"--rest_api_port={rest_port}", "--model_name=half_plus_two",
             f"--model_base_path={MODEL}"], stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{rest_port}/v1/models/half_plus_two:predict"
            deadline = time.monotonic() + 90
            while "Exporting HTTP/REST API" not in (Path(work) / "devserver.log").read_text():
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("devserver did not start")
                time.sleep(0.1)
            address = f"127.0.0.1:{grpc_port}"
            print(json.dumps({"machine": platform.machine(), "python": platform.python_version(),
                              "cores": len(__import__("os").sched_getaffinity(0))}))
            sequential_rest(url, 50)  # warm-up
            for result in (sequential_rest(url, args.sequential),
                           sequential_grpc(address, args.sequential),
                           concurrent_rest(url, args.concurrency, args.seconds),
                           concurrent_grpc(address, args.concurrency, args.seconds)):
                print(json.dumps(result), flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=15)
            log.close()


if __name__ == "__main__":
    main()
