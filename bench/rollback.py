"""Time from fault onset to rollback completed, and promotion time, with the DEFAULT rules.

Starts a devserver and `tfwarden run` (default rule set, probes on the stable and canary labels
at 10 requests/s each). For each fault: a healthy version is staged as a canary, then the fault
file is written into it (the onset); the clock stops when tfwarden's rollback action completed
(the journal's action_done; the stable label never left the old version). Then a healthy
version is staged and the time until it is promoted is measured.

    python bench/rollback.py [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "tests" / "testdata" / "tfserving" / "saved_model_half_plus_two_cpu" / "00000123"
FAULTS = {"latency 2x": None, "errors 50 %": {"error": {"rate": 0.5, "code": "UNAVAILABLE"}}}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Stack:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.base = work / "models" / "m"
        shutil.copytree(MODEL, self.base / "1")
        (work / "models.config").write_text(
            f'model_config_list {{ config {{ name: "m" base_path: "{self.base}" '
            'model_platform: "tensorflow" model_version_policy { specific { versions: 1 } } } }')
        (work / "golden.jsonl").write_text(json.dumps(
            {"request": {"instances": [2.0]}, "expected": {"predictions": [3.0]}}) + "\n")
        rest, grpc, self.port = free_port(), free_port(), free_port()
        self.dev = subprocess.Popen(
            [sys.executable, "-m", "tfwarden.daemon", "devserver", f"--port={grpc}",
             f"--rest_api_port={rest}",
             f"--model_config_file={work / 'models.config'}"], cwd=work,
            stdout=open(work / "dev.log", "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115
        deadline = time.monotonic() + 90
        while "Exporting HTTP/REST API" not in (work / "dev.log").read_text(errors="replace"):
            assert time.monotonic() < deadline and self.dev.poll() is None, "devserver failed"
            time.sleep(0.1)
        (work / "tfwarden.yaml").write_text(f"""
server: {{listen: "127.0.0.1:{self.port}"}}
state_dir: ./state
serving:
  dev: {{kind: tfserving, rest_url: "http://127.0.0.1:{rest}", grpc_address: "127.0.0.1:{grpc}",
         model_config_file: ./models.config, status_interval_seconds: 1}}
models:
  - name: m
    serving: dev
    golden_requests: golden.jsonl
    probe: {{address: labels, labels: [stable, canary], rate_per_second: 10}}
    lifecycle: {{version_poll_seconds: 1}}
""")
        self.daemon = subprocess.Popen(
            [sys.executable, "-m", "tfwarden.daemon", "run", "--config", str(work / "tfwarden.yaml")],
            cwd=work, stdout=subprocess.DEVNULL,
            stderr=open(work / "tfwarden.log", "wb"))  # noqa: SIM115
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=5)
        self.wait(lambda: self.status().get("stable_version") == 1, 60)
        self.version = 1

    def status(self) -> dict[str, Any]:
        try:
            response = self.client.get("/api/v1/models/m")
        except httpx.TransportError:
            return {}
        return response.json() if response.status_code == 200 else {}

    def journal(self, kind: str) -> list[dict[str, Any]]:
        return self.client.get("/api/v1/journal", params={"kind": kind, "limit": 1000}).json()[
            "entries"]

    def wait(self, predicate: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise SystemExit(f"timed out; status {self.status()}")
            time.sleep(0.1)

    def stage(self, faults: dict[str, Any] | None = None) -> int:
        self.version += 1
        staging = self.base.parent / f".staging-{self.version}"
        shutil.copytree(MODEL, staging)
        if faults:
            (staging / "devserver-faults.json").write_text(json.dumps(faults))
        staging.rename(self.base / str(self.version))
        return self.version

    def close(self) -> None:
        for proc in (self.daemon, self.dev):
            proc.terminate()
            proc.wait(timeout=15)


def measure_rollback(stack: Stack, fault: str) -> float:
    version = stack.stage()
    stack.wait(lambda: stack.status().get("canary_version") == version, 60)
    time.sleep(3)  # the canary is live and measured before the fault starts
    spec = FAULTS[fault]
    if spec is None:  # 2x latency: add the stable label's own probe-measured median
        targets = stack.client.get("/debug/probes").json()["predict"]
        stable_p50 = next(t["p50_ms"] for t in targets if t["label"] == "stable")
        spec = {"latency": {"fixed_ms": stable_p50}}
    onset = time.time()
    (stack.base / str(version) / "devserver-faults.json").write_text(json.dumps(spec))
    stack.wait(lambda: stack.status().get("phase") == "rolled_back", 120)
    done = next(e for e in reversed(stack.journal("action_done"))
                if e["payload"]["action"] == "rollback")
    return done["t"] - onset


def measure_promotion(stack: Stack) -> float:
    version = stack.stage()
    start = time.time()
    stack.wait(lambda: stack.status().get("stable_version") == version, 900)
    done = next(e for e in reversed(stack.journal("action_done"))
                if e["payload"]["action"] == "promote")
    return done["t"] - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--skip-rollbacks", action="store_true")
    parser.add_argument("--skip-promotion", action="store_true")
    args = parser.parse_args()
    print(json.dumps({"machine": platform.machine(), "python": platform.python_version()}))
    if not args.skip_rollbacks:
        with tempfile.TemporaryDirectory() as tmp:
            stack = Stack(Path(tmp))
            try:
                for fault in FAULTS:
                    times = [measure_rollback(stack, fault) for _ in range(args.runs)]
                    print(json.dumps({"scenario": f"rollback, {fault}", "runs": len(times),
                                      "seconds_median": round(statistics.median(times), 1),
                                      "seconds_max": round(max(times), 1),
                                      "all": [round(t, 1) for t in times]}), flush=True)
            finally:
                stack.close()
    if not args.skip_promotion:
        # a fresh daemon: the rollbacks above count against max_actions_per_hour (10 per model)
        with tempfile.TemporaryDirectory() as tmp:
            stack = Stack(Path(tmp))
            try:
                seconds = measure_promotion(stack)
                print(json.dumps({"scenario": "promotion of a healthy canary (default rules)",
                                  "seconds": round(seconds, 1)}), flush=True)
            finally:
                stack.close()


if __name__ == "__main__":
    main()
