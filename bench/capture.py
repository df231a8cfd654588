"""Capture throughput: feature rows/s the daemon accepts, its CPU time and RSS growth.

Builds a model with one float input of shape [-1, 10] (TensorFlow, in this process), serves it
with `tfwarden devserver`, starts `tfwarden run` with drift configured for it (so captured rows
also fill the drift buffer) and posts batches of rows to ``POST /api/v1/samples/m`` from this
process. Reports accepted rows per wall second and per daemon CPU second (= rows/s on one
core), and the daemon's RSS before and after; the reservoir (5,000 rows) and the drift buffer
(20,000 rows) bound the growth. Goal (issue 6): >= 20,000 rows/s of 10 float features on one core.

    python bench/capture.py [--rows 200000] [--batch 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def build_model(path: Path) -> None:
    import tensorflow as tf

    class Linear(tf.Module):
        def __init__(self) -> None:
            self.w = tf.Variable(tf.ones([10, 1]))

        @tf.function(input_signature=[tf.TensorSpec([None, 10], tf.float32, name="x")])
        def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"y": tf.matmul(x, self.w)}

    module = Linear()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wait_http(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"bench: {url} did not come up")


@contextmanager
def stack(work: Path, probe_rate: float | None = None) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """The capture benchmarks' set-up in ``work``: the model on the devserver and `tfwarden run`
    with drift configured for it (and a predict probe at ``probe_rate``/s); yields the daemon
    and its port once both answer, and stops both."""
    build_model(work / "models" / "m" / "1")
    grpc_port, rest_port, port = free_port(), free_port(), free_port()
    np.save(work / "reference.npy", np.random.default_rng(0).normal(size=(2000, 10)))
    probe = ""
    if probe_rate is not None:
        (work / "golden.jsonl").write_text(
            json.dumps({"request": {"instances": [[0.0] * 10]}}) + "\n")
        probe = f"    golden_requests: golden.jsonl\n    probe: {{rate_per_second: {probe_rate}}}\n"
    (work / "tfwarden.yaml").write_text(f"""
server: {{listen: "127.0.0.1:{port}"}}
state_dir: ./state
serving:
  dev: {{kind: tfserving, rest_url: "http://127.0.0.1:{rest_port}",
         grpc_address: "127.0.0.1:{grpc_port}"}}
models:
  - name: m
    serving: dev
{probe}    drift: {{engine: scipy, reference: reference.npy, interval_seconds: 3600,
             outputs: {{enabled: false}}}}
capture: {{client_rows_per_second: 1000000, reservoir_rows: 5000, recent_rows: 20000,
           max_body_bytes: 8000000}}
""")
    dev = subprocess.Popen([sys.executable, "-m", "tfwarden.daemon", "devserver",
                            f"--port={grpc_port}", f"--rest_api_port={rest_port}",
                            "--model_name=m", f"--model_base_path={work / 'models' / 'm'}"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    daemon = subprocess.Popen([sys.executable, "-m", "tfwarden.daemon", "run", "--config",
                               str(work / "tfwarden.yaml")], cwd=work,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{rest_port}/v1/models/m")
        wait_http(f"http://127.0.0.1:{port}/-/ready")
        yield daemon, port
    finally:
        daemon.terminate()
        dev.terminate()
        daemon.wait(10)
        dev.wait(10)


def sample_bodies(batch: int, count: int) -> list[bytes]:
    """``count`` samples bodies of ``batch`` rows of 10 normal features (seeded)."""
    rng = np.random.default_rng(1)
    return [json.dumps({"features": [f"x[{i}]" for i in range(10)],
                        "rows": rng.normal(size=(batch, 10)).round(6).tolist()}).encode()
            for _ in range(count)]


def warm_up(client: httpx.Client, body: bytes) -> None:
    """Post until accepted: the signature is read on the first call."""
    for _ in range(100):
        first = client.post("/api/v1/samples/m", content=body,
                            headers={"content-type": "application/json"})
        if first.status_code == 200:
            return
        time.sleep(0.2)
    raise SystemExit(f"bench: capture refused: {first.status_code} {first.text}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, stack(Path(tmp)) as (daemon, port):
        bodies = sample_bodies(args.batch, 20)
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30,
                              headers={"content-type": "application/json"})
        warm_up(client, bodies[0])
        rss_before, cpu_before = rss_mb(daemon.pid), cpu_seconds(daemon.pid)
        started = time.monotonic()
        sent = 0
        while sent < args.rows:
            answer = client.post("/api/v1/samples/m", content=bodies[sent // args.batch % 20])
            assert answer.status_code == 200, answer.text
            sent += args.batch
        wall = time.monotonic() - started
        cpu = cpu_seconds(daemon.pid) - cpu_before
        rss_after = rss_mb(daemon.pid)
        capture = client.get("/api/v1/models/m/capture").json()
    result = {"rows": sent, "batch": args.batch, "features": 10,
              "rows_per_second_wall": round(sent / wall), "daemon_cpu_seconds": round(cpu, 2),
              "rows_per_daemon_cpu_second": round(sent / cpu),
              "rss_mb_before": round(rss_before, 1), "rss_mb_after": round(rss_after, 1),
              "reservoir_kept": capture["reservoirs"][0]["kept_rows"],
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus"}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
