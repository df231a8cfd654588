"""How long the status page takes to build for a big daemon, in process (no HTTP).

A stand-in daemon with ``--models`` managed models, each with ``--versions`` versions probed
through two targets (a label and the version itself) holding ``--samples`` latency samples each
over the last hour (the series windows' cap is 20,000 per series), 40 journal entries per model
(decisions with their findings' evidence) and a current finding per model. Times
``statuspage.collect`` (on the event loop in the daemon; the probe summaries read the windows'
last minute as ``ProbeSupervisor.debug`` does) and ``statuspage.render`` (in a thread: the
journal read, the per-minute quantiles of every version and the HTML): the first render, which
reads every version's hour, then best and median of ``--repeats`` more, which read only what
is not settled yet; and the page's size.

    python bench/statuspage.py [--models 1,10] [--versions 3] [--samples 20000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time
from typing import Any

from tfwarden.core.series import Bucket, BucketHistory, SeriesWindows
from tfwarden.core.types import Sample
from tfwarden.daemon import statuspage

NOW = 1_800_000_000.0


def finding(model: str, version: int) -> dict[str, Any]:
    return {"t": NOW - 5, "detector": "latency", "model": model, "version": version,
            "target": "v1", "verdict": "ok", "reason": "", "effect": {},
            "evidence": {"statistic": "log_e_value", "value": 1.2, "threshold": 16.1,
                         "samples": 900}}


class Source:
    """The PageSource of a daemon with big windows and a busy journal."""

    def __init__(self, models: int, versions: int, samples: int) -> None:
        rng = random.Random(1)
        self.names = [f"model-{i}" for i in range(models)]
        self.windows = SeriesWindows()
        for name in self.names:
            for version in range(1, versions + 1):
                for target in ("stable" if version == 1 else "canary", ""):
                    step = 3600 / samples
                    for i in range(samples):
                        self.windows.add(Sample(NOW - 3600 + i * step, "predict", "latency_ms",
                                                rng.lognormvariate(2.3, 0.3), model=name,
                                                version=version, target=target, ok=i % 97 != 0))
        self.journal = {name: [{"id": n, "t": NOW - 40 + n, "kind": "decision", "model": name,
                                "payload": {"rule": "step-canary-weight", "action": "set_weight",
                                            "params": {"weight": 25}, "reason": "latency ok",
                                            "findings": [finding(name, versions)] * 2}}
                               for n in range(40)][::-1] for name in self.names}
        self.versions = versions
        self.history: BucketHistory | None = None

    def now(self) -> float:
        return NOW

    def status(self) -> dict[str, Any]:
        return {"version": "bench", "ready": True, "uptime_seconds": 100.0,
                "config": {"generation": 1, "path": "tfwarden.yaml"},
                "models": [{"name": n, "serving": "s"} for n in self.names], "jobs": [],
                "process": {"heavy_modules_loaded": []}}

    def models(self) -> list[dict[str, Any]]:
        return [{"model": n, "phase": "canary_live", "stable_version": 1,
                 "canary_version": self.versions, "previous_good": None, "weight": 25,
                 "since": NOW - 60, "rejected": []} for n in self.names]

    def model_detail(self, name: str) -> dict[str, Any] | None:
        status = next(m for m in self.models() if m["model"] == name)
        return {**status, "decisions": [], "awaiting_approval": None}

    def findings(self) -> list[dict[str, Any]]:
        return [finding(n, self.versions) for n in self.names]

    def probes_debug(self) -> dict[str, Any]:  # what ProbeSupervisor.debug reads, per target
        since, targets = NOW - 60, []
        for model, version, target, metric in self.windows.keys():
            samples = self.windows.recent(model, version, metric, target, since, 60)
            targets.append({"target": f"{model}/{target or version}", "samples": len(samples),
                            "outcomes": {"ok": len(samples)}, "p50_ms": None, "p99_ms": None,
                            "last_t": samples[-1].t if samples else None})
        return {"window_seconds": 60.0, "predict": targets, "failures": {}}

    def drift_report(self, name: str) -> dict[str, Any] | None:
        return None

    def edge_rollout(self, model: str) -> dict[str, Any] | None:
        return None

    def edge_models(self) -> list[str]:
        return []

    def drift_worker(self) -> dict[str, Any] | None:
        return None

    def timeline(self, model: str, limit: int) -> list[dict[str, Any]]:
        return self.journal[model][:limit]

    def latency(self, model: str, since: float, bucket_seconds: float) -> dict[int, list[Bucket]]:
        if self.history is None:
            self.history = BucketHistory(self.windows, "latency_ms", bucket_seconds,
                                         statuspage.QUANTILES)
        return self.history.buckets(model, since, NOW)


def measure(models: int, versions: int, samples: int, repeats: int) -> dict[str, Any]:
    source = Source(models, versions, samples)
    collect, render, size = [], [], 0
    for _ in range(repeats + 1):  # the first render reads every version's hour, later ones
        t0 = time.perf_counter()  # only what the last minute added (BucketHistory)
        snapshot = statuspage.collect(source)
        t1 = time.perf_counter()
        html = statuspage.render(source, snapshot)
        t2 = time.perf_counter()
        collect.append(t1 - t0)
        render.append(t2 - t1)
        size = len(html.encode())
    return {"models": models, "versions": versions, "samples_per_series": samples,
            "series": models * versions * 2,
            "collect_ms (event loop)": {"best": round(min(collect) * 1000, 2),
                                        "median": round(statistics.median(collect) * 1000, 2)},
            "first_render_ms": round(render[0] * 1000, 1),
            "render_ms (thread)": {"best": round(min(render[1:]) * 1000, 1),
                                   "median": round(statistics.median(render[1:]) * 1000, 1)},
            "page_kb": round(size / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="1,10")
    parser.add_argument("--versions", type=int, default=3)
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(json.dumps({"machine": f"{platform.machine()} {os.cpu_count()} cpu, "
                                 f"Python {platform.python_version()}"}))
    for models in (int(m) for m in args.models.split(",")):
        print(json.dumps(measure(models, args.versions, args.samples, args.repeats)))


if __name__ == "__main__":
    main()
