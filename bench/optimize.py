"""Optimization methods on an MLP, a small CNN and a wide MLP (2 x 2048) trained on digits.

For each model: the float32 source (SavedModel) and TFLite float32, dynamic-range, float16 and
int8; Keras weight-only int8 SavedModel; pruning at 50 % and 80 % (fine-tuned) and clustering
to 16 centroids (SavedModels, with gzip sizes: pruning only shrinks the compressed size). Each
goes through the real pipeline (workers, validation gate against the source on the 397
held-out digits, publish). Reported: size and gzip size, p50 latency of one request in LiteRT
(pruned/clustered variants converted to TFLite float32 for this) and through the devserver
(REST, one row), accuracy, conversion time, peak RSS of the conversion worker, and the gate's
verdict. Goals (issue 7): int8 >= 3.5x smaller and >= 2x faster than TFLite float32 with <= 1
point accuracy loss; the gate rejects every candidate outside tolerance (a 95 % one-shot pruned
candidate is included to show it).

    python bench/optimize.py [--runs 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tfwarden.optimizers.pipeline import Request, optimize  # noqa: E402
from tfwarden.optimizers.publish import versions  # noqa: E402

VARIANTS: list[tuple[str, str, dict[str, Any]]] = [
    ("tflite float32", "float32", {}),
    ("tflite dynamic-range", "dynamic", {}),
    ("tflite float16", "float16", {}),
    ("tflite int8", "int8", {}),
    ("keras int8 (SavedModel)", "keras_int8", {}),
    ("pruned 50 %", "prune", {"sparsity": 0.5}),
    ("pruned 80 %", "prune", {"sparsity": 0.8}),
    ("clustered 16", "cluster", {"clusters": 16}),
    ("one-shot pruned 95 % (must be rejected)", "prune_oneshot", {"sparsity": 0.95}),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run(work: Path, source: Path, method: str, params: dict[str, Any]) -> Any:
    return asyncio.run(optimize(Request(
        source=source, method=method, base=work / "m", golden=work / "golden.npz",
        representative=work / "representative.npy", train=work / "train.npz", params=params,
        latency_runs=300)))


def devserver_p50(work: Path, versions: list[int], x: np.ndarray, runs: int) -> dict[int, float]:
    config = work / "models.config"
    config.write_text(f'model_config_list {{ config {{ name: "m" base_path: "{work / "m"}" '
                      'model_platform: "tensorflow" model_version_policy { all {} } } }')
    grpc_port, rest_port = free_port(), free_port()
    dev = subprocess.Popen([sys.executable, "-m", "tfwarden.daemon", "devserver", f"--port={grpc_port}",
                            f"--rest_api_port={rest_port}", f"--model_config_file={config}",
                            "--prefer_tflite_model=true"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    out = {}
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{rest_port}", timeout=30)
        deadline = time.monotonic() + 180
        while True:
            try:
                states = client.get("/v1/models/m").json()["model_version_status"]
                if sum(s["state"] == "AVAILABLE" for s in states) >= len(versions):
                    break
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise SystemExit("bench: devserver did not load the versions")
            time.sleep(0.5)
        for version in versions:
            samples = []
            for i in range(runs):
                body = {"instances": [x[i % len(x)].tolist()]}
                started = time.perf_counter()
                answer = client.post(f"/v1/models/m/versions/{version}:predict", json=body)
                samples.append((time.perf_counter() - started) * 1000)
                assert answer.status_code == 200, answer.text
            out[version] = round(statistics.median(samples[20:]), 3)
    finally:
        dev.terminate()
        dev.wait(10)
    return out


def bench(kind: str, runs: int) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        subprocess.run([sys.executable, "-m", "tfwarden.optimizers.models", str(work),
                        *({"cnn": ["--cnn"], "wide": ["--wide"]}.get(kind, []))], check=True,
                       capture_output=True, timeout=600)
        source = work / "m" / "1"
        published: dict[str, int] = {}
        for label, method, params in VARIANTS:
            report = run(work, source, method, params)
            m = report.metrics
            row: dict[str, Any] = {
                "model": kind, "variant": label, "accepted": report.accepted,
                "reasons": report.reasons, "version": report.version,
                "size_kb": round(m["candidate_size_bytes"] / 1024, 1),
                "gzip_kb": round(m["candidate_gzip_bytes"] / 1024, 1),
                "source_size_kb": round(m["source_size_bytes"] / 1024, 1),
                "source_gzip_kb": round(m["source_gzip_bytes"] / 1024, 1),
                "accuracy": round(100 * m["candidate_accuracy"], 2),
                "source_accuracy": round(100 * m["source_accuracy"], 2),
                "top1_agreement": round(m["top1_agreement"], 4),
                "p50_ms_candidate_runtime": m["candidate_latency"]["p50_ms"],
                "p50_ms_source_tf": m["source_latency"]["p50_ms"],
                "convert_seconds": m["convert_seconds"],
                "convert_peak_rss_mb": round(report.steps[0]["peak_rss_bytes"] / 2**20),
            }
            if report.accepted and method in ("prune", "cluster"):
                # LiteRT latency of the variant: its TFLite float32 conversion (Keras int8
                # SavedModels do not convert: tfl.fully_connected refuses their int8 kernels)
                tflite = run(work, work / "m" / str(report.version), "float32", {})
                row["litert_p50_ms"] = tflite.metrics["candidate_latency"]["p50_ms"]
                row["litert_gzip_kb"] = round(tflite.metrics["candidate_gzip_bytes"] / 1024, 1)
            elif method in ("float32", "dynamic", "float16", "int8"):
                row["litert_p50_ms"] = row["p50_ms_candidate_runtime"]
            if report.accepted:
                published[label] = report.version
            rows.append(row)
        x = np.load(work / "golden.npz")["x"]
        served = devserver_p50(work, [v for v in versions(work / "m")
                                      if v == 1 or v in published.values()], x, runs)
        for row in rows:
            if row["version"] in served:
                row["devserver_p50_ms"] = served[row["version"]]
        rows.insert(0, {"model": kind, "variant": "source float32 (SavedModel)",
                        "devserver_p50_ms": served[1], "size_kb": rows[0]["source_size_kb"],
                        "gzip_kb": rows[0]["source_gzip_kb"],
                        "accuracy": rows[0]["source_accuracy"]})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--models", default="mlp,cnn,wide")
    args = parser.parse_args()
    print(json.dumps({"machine": f"{os.cpu_count()} cpus", "date": time.strftime("%Y-%m-%d")}))
    for kind in args.models.split(","):
        for row in bench(kind, args.runs):
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
