"""RSS of the daemon under an unauthenticated flood, with the tokens on: it must stay flat.

Starts `tfwarden run` with `server.bearer_token_file` and `server.ingest_token_file` and one
configured model (no server behind it: nothing is accepted anyway), then sends ``--requests``
requests without a token or with a wrong one, from ``--sources`` different loopback source
addresses (127.0.0.2, 127.0.0.3, ...: each a "client" for the rate buckets), to every writing
route, with client-chosen model names, versions and paths (chunked bodies, oversized bodies).
Samples the daemon's RSS every ``--requests / 10`` requests and reports the samples, the
refusals by status and the number of metric series after the flood.

    python bench/flood.py [--requests 50000] [--sources 200]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
from capture import free_port, rss_mb, wait_http


def requests(rng: random.Random) -> Iterator[tuple[str, str, dict[str, str], bytes | Iterator[bytes]]]:
    """(method, path, headers, body) of the flood, endlessly."""
    while True:
        model = rng.choice(["m", f"model-{rng.randrange(10**9)}", "x" * rng.randrange(1, 200)])
        version = rng.randrange(10**6)
        token = rng.choice([{}, {"Authorization": "Bearer wrong"},
                            {"Authorization": f"Bearer {'y' * rng.randrange(1, 300)}"}])
        body = json.dumps({"instances": [[rng.random()] * 10]}).encode()
        yield rng.choice([
            ("POST", f"/api/v1/capture/{model}?version={version}", token, body),
            ("POST", f"/api/v1/samples/{model}", token, body),
            ("POST", f"/api/v1/samples/{model}", token, iter([body] * 64)),  # chunked
            ("POST", f"/api/v1/capture/{model}", token, b"[" * 200_000),
            ("POST", "/api/v1/alertmanager", token, body),
            ("POST", "/-/reload", token, b""),
            ("POST", f"/api/v1/models/{model}/rollback", token, b""),
            ("POST", f"/api/v1/unknown/{rng.randrange(10**9)}", token, body),
        ])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--sources", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        port = free_port()
        (work / "token").write_text("operator-secret\n")
        (work / "ingest").write_text("ingest-secret\n")
        (work / "tfwarden.yaml").write_text(f"""
server: {{listen: "127.0.0.1:{port}", bearer_token_file: token, ingest_token_file: ingest}}
state_dir: ./state
serving:
  dev: {{kind: tfserving, rest_url: "http://127.0.0.1:{free_port()}"}}
models:
  - name: m
    serving: dev
""")
        daemon = subprocess.Popen([sys.executable, "-m", "tfwarden.daemon", "run", "--config",
                                   str(work / "tfwarden.yaml")], cwd=work,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_http(f"{base}/-/ready")
            time.sleep(2)
            clients = [httpx.Client(base_url=base, timeout=30, transport=httpx.HTTPTransport(
                local_address=f"127.0.0.{2 + i % 250}")) for i in range(args.sources)]
            rng, statuses, samples = random.Random(7), Counter[int](), [round(rss_mb(daemon.pid), 1)]
            started = time.monotonic()
            flood = requests(rng)
            for n in range(1, args.requests + 1):
                method, path, headers, body = next(flood)
                answer = clients[n % args.sources].request(method, path, headers=headers,
                                                            content=body)
                statuses[answer.status_code] += 1
                if n % (args.requests // 10) == 0:
                    samples.append(round(rss_mb(daemon.pid), 1))
            wall = time.monotonic() - started
            series = sum(1 for line in httpx.get(f"{base}/metrics").text.splitlines()
                         if line and not line.startswith("#"))
            ready = httpx.get(f"{base}/-/ready").status_code
            unauthorized = [line for line in httpx.get(f"{base}/metrics").text.splitlines()
                            if line.startswith("tfwarden_http_unauthorized_requests_total")]
            for client in clients:
                client.close()
        finally:
            daemon.terminate()
            daemon.wait(10)
    print(json.dumps({
        "requests": args.requests, "sources": args.sources, "seconds": round(wall, 1),
        "statuses": dict(sorted(statuses.items())), "rss_mb_samples": samples,
        "rss_growth_mb_after_first_tenth": round(samples[-1] - samples[1], 1),
        "metric_series_after": series, "ready_after": ready,
        "unauthorized_series": unauthorized,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
