"""``tfwarden demo``: start the daemon on an embedded default configuration and show it work.

Everything runs on 127.0.0.1 with free ports in a temporary directory that is removed
afterwards. The story grows with the project (devserver, canary, rollback); today it shows the
daemon start, report its status and metrics, refuse a broken configuration without stopping,
and shut down cleanly.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from core.errors import StartupError

DEMO_CONFIG = """\
server:
  listen: 127.0.0.1:{port}
state_dir: ./state
logging:
  level: info
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _metric(text: str, name: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and not sample.labels:
                return float(sample.value)
    return None


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _say(t0: float, message: str) -> None:
    print(f"[{time.monotonic() - t0:6.2f}s] {message}", flush=True)


def run_demo(duration: float | None) -> int:
    """Run the demo for ``duration`` seconds (None: until Ctrl-C); return the exit status."""
    workdir = Path(tempfile.mkdtemp(prefix="tfwarden-demo-"))
    port = free_port()
    config_path = workdir / "tfwarden.yaml"
    config_path.write_text(DEMO_CONFIG.format(port=port))
    base = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    _say(t0, f"starting tfwarden on {base} (config {config_path})")
    proc = subprocess.Popen(
        [sys.executable, "-m", "daemon", "run", "--config", str(config_path)],
        cwd=workdir, stderr=open(workdir / "daemon.log", "wb"),  # noqa: SIM115
    )
    try:
        with httpx.Client(base_url=base, timeout=2.0) as client:
            _wait_ready(client, proc, t0)
            _say(t0, f"ready; daemon RSS {_rss_mb(proc.pid):.0f} MB")
            _show_status(client, proc, t0)
            _demo_reload(client, config_path, t0)
            deadline = None if duration is None else t0 + duration
            while deadline is None or time.monotonic() < deadline:
                time.sleep(min(5.0, max(0.1, (deadline or 1e18) - time.monotonic())))
                _show_status(client, proc, t0)
    except KeyboardInterrupt:
        print()
    finally:
        code = _stop(proc, t0)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if code == 0 else 1


def _wait_ready(client: httpx.Client, proc: subprocess.Popen[bytes], t0: float) -> None:
    while time.monotonic() - t0 < 30:
        if proc.poll() is not None:
            raise StartupError(f"daemon exited with status {proc.returncode} during start-up")
        try:
            if client.get("/-/ready").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise StartupError("daemon was not ready within 30 s")


def _show_status(client: httpx.Client, proc: subprocess.Popen[bytes], t0: float) -> None:
    status = client.get("/api/v1/status").json()
    metrics = client.get("/metrics").text
    jobs = ", ".join(f"{j['name']} x{j['runs']} ({j['last_outcome'] or 'pending'})"
                     for j in status["jobs"])
    reload_ok = _metric(metrics, "tfwarden_config_last_reload_successful")
    _say(t0, f"uptime {status['uptime_seconds']:.1f}s, config generation "
             f"{status['config']['generation']}, last reload ok={reload_ok == 1}, "
             f"RSS {_rss_mb(proc.pid):.0f} MB, jobs: {jobs}")


def _demo_reload(client: httpx.Client, config_path: Path, t0: float) -> None:
    good = config_path.read_text()
    config_path.write_text(good + "unexpected_key: 1\n")
    answer = client.post("/-/reload").json()
    _say(t0, f"reload with a broken file refused, daemon keeps running: {answer['error']}")
    config_path.write_text(good)
    answer = client.post("/-/reload").json()
    _say(t0, f"reload with the fixed file: ok={answer['ok']}, generation {answer['generation']}")


def _stop(proc: subprocess.Popen[bytes], t0: float) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    _say(t0, f"daemon stopped with exit status {proc.returncode}")
    return proc.returncode
