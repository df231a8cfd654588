"""How the daemon's cost grows with the number of probed model versions.

For each size N: M = N / V models with V versions each on one serving endpoint, every version
probed at ``--rate`` requests/s (``address: versions``, followed from gRPC GetModelStatus every
5 s), against bench/responder.py (a minimal TF Serving stand-in in its own processes, so that
the daemon is what is measured). After ``--warmup`` s, over ``--seconds`` s, from /proc and the
daemon's own /metrics:

- CPU: the daemon's user+system seconds per wall second (1.0 = one core);
- RSS at the end (VmRSS) and its peak (VmHWM);
- probe schedule error: ``tfwarden_probe_schedule_lateness_seconds`` (how long after its slot
  each request began), p50/p99 interpolated inside the histogram's buckets, plus skipped slots;
- loop lag: ``tfwarden_event_loop_lag_seconds`` p50/p99;
- requests sent against the schedule (N x rate x seconds);
- the /metrics page: size and the time to fetch it, scraped every ``--scrape-interval`` s during
  the run as a Prometheus would (its cost is part of the daemon's).

Goal (issue 15): 1,000 model versions in <= 1 core and <= 300 MB RSS, schedule error p99
<= 100 ms.

    python bench/scale.py [--sizes 100,300,1000] [--versions 1] [--protocol rest|grpc]
                          [--seconds 60] [--warmup 20] [--rate 1] [--profile PREFIX]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def status_mb(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                found.append(int(entry.name))
    return found


def scrape(url: str) -> dict[str, object]:
    """Histogram buckets of lateness and loop lag, and the probe request/skip totals."""
    lateness: dict[float, float] = {}
    lag: dict[float, float] = {}
    sent = skipped = 0.0
    outcomes: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(url, timeout=30).text):
        for sample in family.samples:
            if sample.name == "tfwarden_probe_schedule_lateness_seconds_bucket":
                lateness[float(sample.labels["le"])] = sample.value
            elif sample.name == "tfwarden_event_loop_lag_seconds_bucket":
                lag[float(sample.labels["le"])] = sample.value
            elif sample.name == "tfwarden_probe_requests_total":
                sent += sample.value
                outcome = sample.labels["outcome"]
                outcomes[outcome] = outcomes.get(outcome, 0) + sample.value
            elif sample.name == "tfwarden_probe_skipped_total":
                skipped += sample.value
    return {"lateness": lateness, "lag": lag, "sent": sent, "skipped": skipped,
            "outcomes": outcomes}


def delta(after: dict[float, float], before: dict[float, float]) -> dict[float, float]:
    return {le: after[le] - before.get(le, 0.0) for le in after}


def quantile(buckets: dict[float, float], q: float) -> float:
    """Prometheus' histogram_quantile: linear inside the bucket that holds the rank (NaN for a
    daemon without the metric, e.g. an older one)."""
    if not buckets:
        return float("nan")
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


def config_text(port: int, rest: int, grpc: int, models: int, versions: int, rate: float,
                protocol: str) -> str:
    address = "versions" if versions > 1 else "latest"
    lines = [
        f"server: {{listen: '127.0.0.1:{port}'}}",
        "state_dir: ./state",
        "logging: {level: warning}",
        "serving:",
        f"  main: {{kind: tfserving, rest_url: 'http://127.0.0.1:{rest}', "
        f"grpc_address: '127.0.0.1:{grpc}', status_interval_seconds: 5}}",
        "models:",
    ]
    lines += [f"  - {{name: m{i:04d}, serving: main, probe: {{address: {address}, "
              f"rate_per_second: {rate}, protocol: {protocol}}}}}" for i in range(models)]
    return "\n".join(lines) + "\n"


def wait_ready(proc: subprocess.Popen[bytes], url: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"daemon exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise SystemExit("daemon not ready in time")


class Scraper(threading.Thread):
    """GETs /metrics every ``interval`` s, as Prometheus would; keeps the fetch times."""

    def __init__(self, url: str, interval: float) -> None:
        super().__init__(daemon=True)
        self.url, self.interval, self.times, self.size = url, interval, [], 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.interval):
            started = time.monotonic()
            self.size = len(httpx.get(self.url, timeout=30).content)
            self.times.append(time.monotonic() - started)


def one_size(size: int, versions: int, rate: float, protocol: str, warmup: float,
             seconds: float, profile: str | None = None,
             scrape_interval: float = 15.0) -> dict[str, object]:
    models = max(1, size // versions)
    with tempfile.TemporaryDirectory() as tmp:
        port, rest, grpc = free_port(), free_port(), free_port()
        responder = subprocess.Popen(
            [sys.executable, str(HERE / "responder.py"), "--rest-port", str(rest),
             "--grpc-port", str(grpc), "--versions", str(versions), "--workers", "2"],
            stdout=subprocess.PIPE)
        assert responder.stdout is not None
        if responder.stdout.readline().strip() != b"ready":
            raise SystemExit("responder did not start")
        config = Path(tmp) / "tfwarden.yaml"
        config.write_text(config_text(port, rest, grpc, models, versions, rate, protocol))
        daemon = subprocess.Popen(
            [sys.executable, "-m", "tfwarden.daemon", "run", "--config", str(config)],
            cwd=tmp, stderr=open(Path(tmp) / "daemon.log", "wb"))
        try:
            base = f"http://127.0.0.1:{port}"
            wait_ready(daemon, f"{base}/-/ready")
            time.sleep(warmup)
            before, cpu0, t0 = scrape(f"{base}/metrics"), cpu_seconds(daemon.pid), time.monotonic()
            scraper = Scraper(f"{base}/metrics", scrape_interval)
            scraper.start()
            responders = [responder.pid, *children(responder.pid)]
            serve0 = sum(cpu_seconds(p) for p in responders)
            spy = None if profile is None else subprocess.Popen(
                ["py-spy", "record", "--format", "raw", "--rate", "200", "--duration",
                 str(int(seconds)), "--pid", str(daemon.pid), "--output", f"{profile}-{size}.txt"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(seconds)
            scraper.done.set()
            scraper.join()
            if spy is not None:
                spy.wait(timeout=60)
            after, cpu1, t1 = scrape(f"{base}/metrics"), cpu_seconds(daemon.pid), time.monotonic()
            serve1 = sum(cpu_seconds(p) for p in responders)
            rss, peak = status_mb(daemon.pid, "VmRSS"), status_mb(daemon.pid, "VmHWM")
        finally:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.kill()
            for pid in children(responder.pid):
                os.kill(pid, signal.SIGKILL)
            responder.kill()
            responder.wait()
        wall = t1 - t0
        lateness = delta(after["lateness"], before["lateness"])  # type: ignore[arg-type]
        lag = delta(after["lag"], before["lag"])  # type: ignore[arg-type]
        sent = after["sent"] - before["sent"]  # type: ignore[operator]
        outcomes = {k: v - before["outcomes"].get(k, 0.0)  # type: ignore[attr-defined]
                    for k, v in after["outcomes"].items()}  # type: ignore[attr-defined]
        return {
            "versions_probed": models * versions, "models": models, "versions": versions,
            "protocol": protocol,
            "cpu_cores": round((cpu1 - cpu0) / wall, 3),
            "cpu_ms_per_probe": round((cpu1 - cpu0) * 1000 / sent, 3) if sent else None,
            "rss_mb": round(rss, 1), "peak_rss_mb": round(peak, 1),
            "schedule_error_p50_ms": round(quantile(lateness, 0.5) * 1000, 2),
            "schedule_error_p99_ms": round(quantile(lateness, 0.99) * 1000, 2),
            "loop_lag_p50_ms": round(quantile(lag, 0.5) * 1000, 2),
            "loop_lag_p99_ms": round(quantile(lag, 0.99) * 1000, 2),
            "sent_per_s": round(sent / wall, 1), "scheduled_per_s": models * versions * rate,
            "skipped": after["skipped"] - before["skipped"],  # type: ignore[operator]
            "not_ok": sum(v for k, v in outcomes.items() if k != "ok"),
            "responder_cpu_cores": round((serve1 - serve0) / wall, 3),
            "metrics_kb": round(scraper.size / 1024), "metrics_fetch_s": max(scraper.times, default=None),
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100,300,1000")
    parser.add_argument("--versions", type=int, default=1, help="versions per model")
    parser.add_argument("--protocol", choices=("rest", "grpc"), default="rest")
    parser.add_argument("--rate", type=float, default=1.0, help="requests/s per version")
    parser.add_argument("--warmup", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--scrape-interval", type=float, default=15.0)
    parser.add_argument("--profile", metavar="PREFIX", help="also record the daemon with py-spy "
                        "(collapsed stacks in PREFIX-N.txt; costs the daemon some CPU)")
    args = parser.parse_args()
    print(f"# {time.strftime('%Y-%m-%d')} {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}", flush=True)
    header = ("versions", "cpu", "ms/probe", "rss MB", "sched p50", "sched p99", "lag p50",
              "lag p99", "sent/s", "skipped", "/metrics")
    print(("{:>9} " * len(header)).format(*header), flush=True)
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        row = one_size(size, args.versions, args.rate, args.protocol, args.warmup, args.seconds,
                       args.profile, args.scrape_interval)
        rows.append(row)
        print(("{:>9} " * len(header)).format(
            row["versions_probed"], row["cpu_cores"], row["cpu_ms_per_probe"], row["rss_mb"],
            row["schedule_error_p50_ms"], row["schedule_error_p99_ms"], row["loop_lag_p50_ms"],
            row["loop_lag_p99_ms"], f"{row['sent_per_s']}/{row['scheduled_per_s']:g}",
            row["skipped"], f"{row['metrics_kb']}K"), flush=True)
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
