"""``tfwarden demo``: tfwarden watching a live (dev)server, with one command.

Everything runs on 127.0.0.1 with free ports in a temporary directory removed afterwards:
1. `tfwarden devserver` serves half_plus_two as version 1 and version 2; version 2 carries a
   latency fault file (lognormal, median +15 ms), so the two versions really differ;
2. `tfwarden run` watches it: gRPC status probe, open-loop golden-request predict probes to
   each AVAILABLE version at 10/s, and the devserver's memory;
3. every few seconds the demo prints what tfwarden observes and concludes, read from its own API
   (`/debug/probes`, `/api/v1/findings`), until `--duration` or Ctrl-C: version 2 is found to
   be a latency regression against version 1, with its effect size and evidence.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from core.errors import StartupError

MODEL_DATA = Path(__file__).parent / "demo-data" / "half_plus_two" / "00000123"
FAULT = {"latency": {"lognormal": {"median_ms": 15, "sigma": 0.3}}, "seed": 1}
GOLDEN = [{"request": {"instances": [1.0, 2.0, 5.0]}, "expected": {"predictions": [2.5, 3.0, 4.5]}},
          {"request": {"inputs": [0.0]}, "expected": {"outputs": [2.0]}}]
TFWARDEN_CONFIG = """\
server:
  listen: 127.0.0.1:{port}
state_dir: ./state
serving:
  dev:
    kind: tfserving
    rest_url: http://127.0.0.1:{rest}
    grpc_address: 127.0.0.1:{grpc}
    model_config_file: ./models.config
    status_interval_seconds: 1
models:
  - name: half_plus_two
    serving: dev
    golden_requests: ./golden.jsonl
    probe:
      address: versions
      rate_per_second: 10
memory:
  - name: devserver
    pid_file: ./devserver.pid
    interval_seconds: 2
"""
MODELS_CONFIG = """model_config_list {{ config {{
  name: "half_plus_two" base_path: "{base}" model_platform: "tensorflow"
  model_version_policy {{ all {{}} }}
}} }}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class _Timeline:
    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def say(self, message: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.1f}s] {message}", flush=True)


def _prepare(work: Path) -> tuple[int, int, int]:
    base = work / "models" / "half_plus_two"
    for version in (1, 2):
        shutil.copytree(MODEL_DATA, base / str(version))
    (base / "2" / "devserver-faults.json").write_text(json.dumps(FAULT))
    (work / "models.config").write_text(MODELS_CONFIG.format(base=base))
    (work / "golden.jsonl").write_text("".join(json.dumps(g) + "\n" for g in GOLDEN))
    rest, grpc, port = free_port(), free_port(), free_port()
    (work / "tfwarden.yaml").write_text(TFWARDEN_CONFIG.format(port=port, rest=rest, grpc=grpc))
    return rest, grpc, port


def _spawn(args: list[str], work: Path, log_name: str) -> subprocess.Popen[bytes]:
    log = open(work / log_name, "wb")  # noqa: SIM115 - closed with the process
    return subprocess.Popen([sys.executable, "-m", "daemon", *args], cwd=work, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def _wait(predicate: Any, proc: subprocess.Popen[bytes], what: str, log: Path,
          timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            raise StartupError(f"{what} exited with status {proc.returncode}: {' | '.join(tail)}")
        if predicate():
            return
        time.sleep(0.1)
    raise StartupError(f"{what} was not ready within {timeout:.0f} s")


def run_demo(duration: float | None) -> int:
    """Run the demo for ``duration`` seconds (None: until Ctrl-C); return the exit status."""
    work = Path(tempfile.mkdtemp(prefix="tfwarden-demo-"))
    timeline = _Timeline()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        rest, grpc, port = _prepare(work)
        timeline.say("starting tfwarden devserver (TF Serving protocol) with half_plus_two "
                     "versions 1 and 2; version 2 has a latency fault (median +15 ms)")
        dev = _spawn(["devserver", f"--port={grpc}", f"--rest_api_port={rest}",
                      f"--model_config_file={work / 'models.config'}"], work, "devserver.log")
        procs.append(dev)
        (work / "devserver.pid").write_text(str(dev.pid))
        _wait(lambda: "Exporting HTTP/REST API" in (work / "devserver.log").read_text(errors="replace"),
              dev, "devserver", work / "devserver.log")
        timeline.say(f"devserver ready: REST 127.0.0.1:{rest}, gRPC 127.0.0.1:{grpc}")
        daemon = _spawn(["run", "--config", str(work / "tfwarden.yaml")], work, "tfwarden.log")
        procs.append(daemon)
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=5.0) as client:
            _wait(lambda: _ready(client), daemon, "tfwarden", work / "tfwarden.log")
            timeline.say(f"tfwarden ready on {base} (daemon RSS {_rss_mb(daemon.pid):.0f} MB, "
                         "no TensorFlow in it); probing each version at 10 requests/s")
            deadline = None if duration is None else time.monotonic() + duration
            while deadline is None or time.monotonic() < deadline:
                time.sleep(min(5.0, max(0.5, (deadline or 1e18) - time.monotonic())))
                _report(client, daemon, timeline)
    except KeyboardInterrupt:
        print()
    finally:
        codes = [_stop(p) for p in reversed(procs)]
        timeline.say("stopped tfwarden and the devserver")
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(c == 0 for c in codes) else 1


def _ready(client: httpx.Client) -> bool:
    try:
        return client.get("/-/ready").status_code == 200
    except httpx.TransportError:
        return False


def _report(client: httpx.Client, daemon: subprocess.Popen[bytes], timeline: _Timeline) -> None:
    debug = client.get("/debug/probes").json()
    states = {v["version"]: v["state"] for m in debug.get("status", {}).values()
              for v in m.get("versions", [])}
    for target in debug.get("predict", []):
        outcomes = target["outcomes"]
        failed = sum(n for k, n in outcomes.items() if k != "ok")
        p50 = "-" if target["p50_ms"] is None else f"{target['p50_ms']:.1f}"
        p99 = "-" if target["p99_ms"] is None else f"{target['p99_ms']:.1f}"
        timeline.say(f"{target['target']:<18} {states.get(target['version'], '?'):<10} "
                     f"p50 {p50:>6} ms  p99 {p99:>6} ms  last {debug['window_seconds']:.0f}s: "
                     f"{outcomes.get('ok', 0)} ok, {failed} failed")
    for finding in client.get("/api/v1/findings").json()["findings"]:
        if finding["detector"] not in ("latency", "errors"):
            continue
        effect = finding["effect"]
        detail = ""
        if "median_ratio" in effect and "median_ratio_ci" in effect:
            low, high = effect["median_ratio_ci"]
            detail = f" median {effect['median_ratio']:.2f}x (95% CI {low:.2f}-{high:.2f})"
        evidence = finding["evidence"]
        timeline.say(f"{'finding ' + finding['detector']:<18} v{finding['version']} vs "
                     f"{finding['target']}: {finding['verdict'].upper()}{detail}"
                     f"{' - ' + finding['reason'] if finding['reason'] else ''} "
                     f"[{evidence.get('pairs', 0)} pairs]")
    memory = debug.get("recent", {}).get("memory:devserver", [])
    if memory and memory[-1]["ok"]:
        rss = memory[-1]["detail"]["rss_bytes"] / 2**20
        timeline.say(f"{'devserver memory':<18} RSS {rss:.0f} MB; tfwarden daemon RSS "
                     f"{_rss_mb(daemon.pid):.0f} MB")


def _stop(proc: subprocess.Popen[bytes]) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode
