"""CPU per predict probe request of candidate clients, the probe path's only real cost.

Each client sends TF Serving REST predicts (or gRPC Predict) open-loop at ``--rate`` requests/s
in all, spread over ``--targets`` distinct model URLs (as the daemon's probes are), for
``--seconds``, against bench/responder.py in its own processes. Each client runs in a fresh
process; reported: this process's CPU milliseconds per request (user + system, from
``time.process_time``), requests answered, and errors.

    python bench/http_clients.py [--rate 500] [--seconds 10] [--targets 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BODY = {"instances": [1.0, 2.0, 5.0]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def drive(send: Callable[[int], Awaitable[bool]], rate: float, seconds: float,
                targets: int) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    interval, tasks, oks = 1 / rate, set(), [0, 0]

    async def one(i: int) -> None:
        oks[0 if await send(i % targets) else 1] += 1

    for i in range(50):  # connections up, one-off look-ups done
        await one(i)
    oks[:] = [0, 0]
    cpu0, start = time.process_time(), loop.time()
    i = 0
    while loop.time() - start < seconds:
        task = asyncio.create_task(one(i))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        i += 1
        await asyncio.sleep(max(0.0, start + i * interval - loop.time()))
    await asyncio.gather(*tasks)
    cpu = time.process_time() - cpu0
    return {"cpu_ms_per_request": round(cpu * 1000 / max(1, oks[0] + oks[1]), 3),
            "ok": oks[0], "failed": oks[1]}


async def httpx_client(base: str, grpc: str, rate: float, seconds: float, targets: int,
                       pool: int) -> dict[str, float]:
    import httpx

    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=pool)) as client:
        async def send(i: int) -> bool:
            response = await client.post(f"{base}/v1/models/m{i:04d}:predict", json=BODY)
            response.json()
            return response.status_code == 200
        return await drive(send, rate, seconds, targets)


async def aiohttp_client(base: str, grpc: str, rate: float, seconds: float, targets: int,
                         pool: int) -> dict[str, float]:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=pool)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def send(i: int) -> bool:
            async with session.post(f"{base}/v1/models/m{i:04d}:predict", json=BODY) as response:
                await response.json()
                return response.status == 200
        return await drive(send, rate, seconds, targets)


async def grpc_client(base: str, grpc: str, rate: float, seconds: float, targets: int,
                      pool: int) -> dict[str, float]:
    import grpc as grpclib

    from tfwarden.serving.tfserving import protos

    pb = protos.load()
    async with grpclib.aio.insecure_channel(grpc) as channel:
        stub = pb.prediction_service_pb2_grpc.PredictionServiceStub(channel)

        async def send(i: int) -> bool:
            request = pb.predict_pb2.PredictRequest()
            request.model_spec.name = f"m{i:04d}"
            request.inputs["x"].dtype = 1
            request.inputs["x"].tensor_shape.dim.add(size=3)
            request.inputs["x"].float_val.extend(BODY["instances"])
            response = await stub.Predict(request, timeout=5)
            return len(response.outputs["y"].float_val) == 3
        return await drive(send, rate, seconds, targets)


CLIENTS: dict[str, tuple[Any, int]] = {
    "httpx, pool 100": (httpx_client, 100),
    "httpx, pool 10": (httpx_client, 10),
    "aiohttp, pool 100": (aiohttp_client, 100),
    "aiohttp, pool 10": (aiohttp_client, 10),
    "grpcio aio": (grpc_client, 0),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--targets", type=int, default=1000)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # run one client (child process)
    parser.add_argument("--rest", help=argparse.SUPPRESS)
    parser.add_argument("--grpc", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        func, pool = CLIENTS[args.one]
        print(json.dumps(asyncio.run(func(args.rest, args.grpc, args.rate, args.seconds,
                                          args.targets, pool))))
        return 0
    rest, grpc = free_port(), free_port()
    responder = subprocess.Popen([sys.executable, str(HERE / "responder.py"), "--rest-port",
                                  str(rest), "--grpc-port", str(grpc), "--workers", "1"],
                                 stdout=subprocess.PIPE, start_new_session=True)
    assert responder.stdout is not None
    responder.stdout.readline()
    print(f"# {time.strftime('%Y-%m-%d')} {platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}; {args.rate:g} requests/s over {args.targets} URLs, "
          f"{args.seconds:g} s", flush=True)
    try:
        for name in CLIENTS:
            out = subprocess.run(
                [sys.executable, __file__, "--one", name, "--rest", f"http://127.0.0.1:{rest}",
                 "--grpc", f"127.0.0.1:{grpc}", "--rate", str(args.rate), "--seconds",
                 str(args.seconds), "--targets", str(args.targets)],
                capture_output=True, text=True, check=False)
            if out.returncode != 0:
                print(f"{name:>20}: failed: {out.stderr.strip().splitlines()[-1:]}")
                continue
            result = json.loads(out.stdout)
            print(f"{name:>20}: {result['cpu_ms_per_request']:6.3f} ms CPU/request, "
                  f"{result['ok']} ok, {result['failed']} failed", flush=True)
    finally:
        os.killpg(responder.pid, signal.SIGKILL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
