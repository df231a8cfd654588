"""Edge telemetry ingest: OTLP data points per daemon CPU second (protobuf and JSON), and RSS
with many devices reporting.

Starts `tfwarden run` with one edge model (cohorts by delegate x device model: 4 x 25 = 100) and
posts ``ExportMetricsServiceRequest``s as a collector or an app backend would batch them:
``--batch`` devices per request, one resource each (model, version, runtime, delegate, device
model, hashed-on-receipt device id) with a cumulative ``ml.inference.duration`` histogram of 12
buckets. Phase 1 sends ``--points`` points as protobuf, then as JSON, and reports points per daemon
CPU second (= per second on one core). Phase 2: ``--devices`` devices report ``--rounds`` times
(cumulative, as SDKs export every minute), and RSS is read before, after the first round and at
the end. Goal (issue 12): >= 50,000 points per CPU second.

    python bench/edge.py [--points 200000] [--batch 200] [--devices 100000] [--rounds 2]
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
from pathlib import Path

import httpx
from capture import cpu_seconds, free_port, rss_mb, wait_http
from google.protobuf import json_format
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)

BOUNDS = [1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144]
DELEGATES = ["cpu", "xnnpack", "gpu", "nnapi"]
DEVICE_MODELS = [f"phone-{n}" for n in range(25)]


def request_for(devices: range, round_: int, rng: random.Random) -> ExportMetricsServiceRequest:
    request = ExportMetricsServiceRequest()
    for device in devices:
        resource_metrics = request.resource_metrics.add()
        for key, value in (("ml.model.name", "digits"), ("ml.model.version", "3"),
                           ("ml.runtime.name", "litert"),
                           ("ml.delegate", DELEGATES[device % 4]),
                           ("device.model.identifier", DEVICE_MODELS[device % 25]),
                           ("device.id", f"device-{device}")):
            attribute = resource_metrics.resource.attributes.add(key=key)
            attribute.value.string_value = value
        metric = resource_metrics.scope_metrics.add().metrics.add(
            name="ml.inference.duration", unit="ms")
        metric.histogram.aggregation_temporality = 2  # cumulative, the SDKs' default
        point = metric.histogram.data_points.add(start_time_unix_nano=1,
                                                 time_unix_nano=(round_ + 2) * 60 * 10**9)
        counts = [rng.randrange(0, 5) * (round_ + 1) for _ in range(len(BOUNDS) + 1)]
        point.explicit_bounds.extend(BOUNDS)
        point.bucket_counts.extend(counts)
        point.count = sum(counts)
        point.sum = float(sum(c * b for c, b in zip(counts, [*BOUNDS, 200], strict=True)))
    return request


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--points", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    rng = random.Random(7)
    with tempfile.TemporaryDirectory() as tmp:
        work, port = Path(tmp), free_port()
        (work / "tfwarden.yaml").write_text(f"""
server: {{listen: "127.0.0.1:{port}"}}
state_dir: ./state
edge:
  models: [{{name: digits, max_cohorts: 200}}]
  client_points_per_second: 100000000
  max_body_bytes: 16000000
""")
        daemon = subprocess.Popen([sys.executable, "-m", "tfwarden.daemon", "run", "--config",
                                   str(work / "tfwarden.yaml")], cwd=work,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        result: dict[str, object] = {}
        try:
            wait_http(f"{base}/-/ready")
            client = httpx.Client(base_url=base, timeout=60)
            rss_start = rss_mb(daemon.pid)
            # phase 1: throughput, devices 10,000,000+ so phase 2 starts from clean streams
            for encoding in ("protobuf", "json"):
                bodies = []
                for n in range(20):
                    first = 10_000_000 + n * args.batch
                    message = request_for(range(first, first + args.batch), 0, rng)
                    bodies.append(message.SerializeToString() if encoding == "protobuf" else
                                  json_format.MessageToJson(message, indent=None).encode())
                content_type = "application/x-protobuf" if encoding == "protobuf" \
                    else "application/json"
                before, sent, started = cpu_seconds(daemon.pid), 0, time.monotonic()
                while sent < args.points:
                    answer = client.post("/v1/metrics", content=bodies[sent // args.batch % 20],
                                         headers={"content-type": content_type})
                    assert answer.status_code == 200, answer.text
                    sent += args.batch
                cpu, wall = cpu_seconds(daemon.pid) - before, time.monotonic() - started
                result[f"{encoding}_points"] = sent
                result[f"{encoding}_body_bytes"] = len(bodies[0])
                result[f"{encoding}_points_per_cpu_second"] = round(sent / cpu)
                result[f"{encoding}_points_per_wall_second"] = round(sent / wall)
            # phase 2: many devices, each reporting every "minute"
            rss_before = rss_mb(daemon.pid)
            rss_rounds = []
            for round_ in range(args.rounds):
                for first in range(0, args.devices, args.batch):
                    message = request_for(range(first, min(first + args.batch, args.devices)),
                                          round_, rng)
                    answer = client.post("/v1/metrics", content=message.SerializeToString(),
                                         headers={"content-type": "application/x-protobuf"})
                    assert answer.status_code == 200, answer.text
                rss_rounds.append(round(rss_mb(daemon.pid), 1))
            stats = client.get("/api/v1/edge/digits").json()
            cohorts = stats["versions"]["3"]
            result.update(
                devices=args.devices, rounds=args.rounds, rss_mb_start=round(rss_start, 1),
                rss_mb_before_devices=round(rss_before, 1), rss_mb_after_each_round=rss_rounds,
                cohorts=len(cohorts),
                devices_seen=sum(c["devices"] for c in cohorts.values()),
                machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus")
        finally:
            daemon.terminate()
            daemon.wait(10)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
