"""Edge telemetry ingest: OTLP data points per CPU second (protobuf and JSON), through the
daemon and in the receiver alone (with and without a sink), and RSS with many devices reporting.

Posts ``ExportMetricsServiceRequest``s as a collector or an app backend would batch them:
``--batch`` devices per request, one resource each (model, version, runtime, delegate, device
model, hashed-on-receipt device id) with a cumulative ``ml.inference.duration`` histogram of 12
buckets; one edge model, cohorts by delegate x device model (4 x 25 = 100). Each device's counts
grow from one report to the next (as SDKs export every minute), so every point is a delta that is
aggregated (and told to the sink as a Sample).

- Phase 1, daemon: `tfwarden run` is sent ``--points`` points as protobuf, then as JSON (bodies
  of 20 batches x 10 reports, made beforehand), ``--repeats`` times; points per daemon CPU
  second (= per second on one core; HTTP, decoding, flattening, aggregation and the daemon's
  own sink included) and per wall second, the best run and the median (CPU time on this
  virtual machine varies by up to 2x from run to run).
- Phase 1, receiver: the same bodies through ``EdgeReceiver.metrics`` in this process, without a
  sink and with a list-appending one; points per CPU second of this process (best, median).
- Phase 2: ``--devices`` devices report ``--rounds`` times (as protobuf) to the daemon, and its
  RSS is read before, after each round.

Goal (issue 12): >= 50,000 points per CPU second, protobuf and JSON.

    python bench/edge.py [--points 100000] [--repeats 5] [--batch 200] [--devices 100000]
                         [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from capture import cpu_seconds, free_port, rss_mb, wait_http
from google.protobuf import json_format
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)

BOUNDS = [1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144]
DELEGATES = ["cpu", "xnnpack", "gpu", "nnapi"]
DEVICE_MODELS = [f"phone-{n}" for n in range(25)]
CONTENT_TYPES = {"protobuf": "application/x-protobuf", "json": "application/json"}
BATCHES, REPORTS = 20, 10  # phase 1: distinct batches of devices x reports of each


def request_for(devices: range, round_: int, rng: random.Random) -> ExportMetricsServiceRequest:
    """Report ``round_`` (0, 1...) of each device: cumulative counts, each device's own per
    report (at least one inference) times the number of reports so far."""
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
        own = random.Random(device * 7919)
        per_report = [own.randrange(0, 5) for _ in range(len(BOUNDS) + 1)]
        per_report[device % len(per_report)] += 1
        counts = [c * (round_ + 1) for c in per_report]
        point.explicit_bounds.extend(BOUNDS)
        point.bucket_counts.extend(counts)
        point.count = sum(counts)
        point.sum = float(sum(c * b for c, b in zip(counts, [*BOUNDS, 200], strict=True)))
    return request


def bodies_for(encoding: str, batch: int, rng: random.Random) -> list[bytes]:
    """Phase 1's bodies: each of ``BATCHES`` batches of devices (10,000,000 on, apart from phase
    2's), report after report."""
    bodies = []
    for round_ in range(REPORTS):
        for n in range(BATCHES):
            first = 10_000_000 + n * batch
            message = request_for(range(first, first + batch), round_, rng)
            bodies.append(message.SerializeToString() if encoding == "protobuf" else
                          json_format.MessageToJson(message, indent=None).encode())
    return bodies


class ListSink:
    def __init__(self) -> None:
        self.samples: list[Any] = []

    def observe(self, sample: Any) -> None:
        self.samples.append(sample)


def in_process(bodies: dict[str, list[bytes]], points: int, batch: int,
               repeats: int) -> dict[str, int]:
    """Points per CPU second of EdgeReceiver.metrics alone (no HTTP), without and with a sink:
    the best of ``repeats`` runs of ``points`` (this machine's CPU time is noisy)."""
    from tfwarden.probes.edge.receiver import EdgeReceiver
    from tfwarden.probes.edge.settings import EdgeSettings

    settings = EdgeSettings.model_validate({
        "models": [{"name": "digits", "max_cohorts": 200}],
        "client_points_per_second": 100_000_000, "max_body_bytes": 16_000_000})
    result = {}
    for sink_name in ("no_sink", "list_sink"):
        for encoding, encoded in bodies.items():
            sink = ListSink() if sink_name == "list_sink" else None
            receiver = EdgeReceiver(settings, b"bench-key", sink)  # type: ignore[arg-type]
            content_type = CONTENT_TYPES[encoding]

            async def send(receiver: Any, encoded: list[bytes], content_type: str,
                           first: int) -> None:
                for sent in range(first, first + points, batch):
                    await receiver.metrics(encoded[sent // batch % len(encoded)], content_type,
                                           None, "127.0.0.1")

            rates = []
            for n in range(repeats):
                started = time.process_time()
                asyncio.run(send(receiver, encoded, content_type, n * points))
                rates.append(points / (time.process_time() - started))
            result[f"receiver_{encoding}_{sink_name}_points_per_cpu_second"] = round(max(rates))
            result[f"receiver_{encoding}_{sink_name}_median"] = round(sorted(rates)[repeats // 2])
            if sink is not None:
                assert len(sink.samples) == repeats * points, (len(sink.samples), points)
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5,
                        help="phase 1 runs of --points each; the best is reported")
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
        bodies: dict[str, list[bytes]] = {}
        try:
            wait_http(f"{base}/-/ready")
            client = httpx.Client(base_url=base, timeout=60)
            rss_start = rss_mb(daemon.pid)
            # phase 1: throughput, devices 10,000,000+ so phase 2 starts from clean streams
            bodies = {encoding: bodies_for(encoding, args.batch, rng)
                      for encoding in CONTENT_TYPES}
            for encoding, encoded in bodies.items():
                rates, walls = [], []
                for n in range(args.repeats):
                    before, started = cpu_seconds(daemon.pid), time.monotonic()
                    for sent in range(n * args.points, (n + 1) * args.points, args.batch):
                        answer = client.post("/v1/metrics",
                                             content=encoded[sent // args.batch % len(encoded)],
                                             headers={"content-type": CONTENT_TYPES[encoding]})
                        assert answer.status_code == 200 and not answer.content.strip(b"{}"), \
                            answer.text
                    rates.append(args.points / (cpu_seconds(daemon.pid) - before))
                    walls.append(args.points / (time.monotonic() - started))
                result[f"{encoding}_points"] = args.points
                result[f"{encoding}_body_bytes"] = len(encoded[0])
                result[f"{encoding}_points_per_cpu_second"] = round(max(rates))
                result[f"{encoding}_median"] = round(sorted(rates)[args.repeats // 2])
                result[f"{encoding}_points_per_wall_second"] = round(max(walls))
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
    result.update(in_process(bodies, args.points, args.batch, args.repeats))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
