"""Idle daemon footprint: start-up time to /-/ready and resident memory.

Starts `tfwarden run` (via the installed interpreter) on a free loopback port with an empty
model list N times, measures the time from spawn to the first 200 from /-/ready, then idles for
a few seconds and reads VmRSS (and the peak VmHWM) from /proc. Prints one JSON line per run and
a summary line. Goals (issue 2): RSS <= 120 MB, ready <= 2 s.

    python bench/daemon_footprint.py [--runs 5] [--idle 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

CONFIG = """\
server: {{listen: "127.0.0.1:{port}"}}
state_dir: ./state
serving:
  main: {{kind: tfserving, rest_url: "http://127.0.0.1:1", grpc_address: "127.0.0.1:2"}}
models:
  - {{name: half_plus_two, serving: main}}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def proc_status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def one_run(idle_seconds: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        config = Path(tmp) / "tfwarden.yaml"
        config.write_text(CONFIG.format(port=port))
        start = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "tfwarden.daemon", "run", "--config", str(config)],
                                cwd=tmp, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}/-/ready"
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"daemon exited with {proc.returncode}")
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            time.sleep(0.01)
        ready_s = time.monotonic() - start
        time.sleep(idle_seconds)
        rss_mb = proc_status_kb(proc.pid, "VmRSS") / 1024
        peak_mb = proc_status_kb(proc.pid, "VmHWM") / 1024
        stop = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=15)
        return {"ready_s": round(ready_s, 3), "rss_mb": round(rss_mb, 1),
                "peak_rss_mb": round(peak_mb, 1), "stop_s": round(time.monotonic() - stop, 3),
                "exit": code}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--idle", type=float, default=3.0)
    args = parser.parse_args()
    runs = []
    for _ in range(args.runs):
        result = one_run(args.idle)
        runs.append(result)
        print(json.dumps(result))
    summary = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "python": platform.python_version(),
        "runs": len(runs),
        "ready_s_median": statistics.median(r["ready_s"] for r in runs),
        "ready_s_max": max(r["ready_s"] for r in runs),
        "rss_mb_median": statistics.median(r["rss_mb"] for r in runs),
        "peak_rss_mb_max": max(r["peak_rss_mb"] for r in runs),
        "stop_s_max": max(r["stop_s"] for r in runs),
        "goal": "rss <= 120 MB, ready <= 2 s",
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
