"""TF Serving's Prometheus page, in its exact format (``util/prometheus_exporter.cc``).

Names are TF metric paths with every character outside ``[a-zA-Z0-9_]`` turned into ``:``;
only ``# TYPE`` lines; counters without ``_total``; histogram limits printed with 6 significant
digits; TF buckets are [lower, upper) so a value equal to a limit lands in the next bucket;
families sorted by metric path. prometheus_client cannot produce this format, hence this module.
"""

from __future__ import annotations

import bisect
import re
import threading
from collections.abc import Sequence
from pathlib import Path


def exponential_buckets(scale: float, growth: float, count: int) -> list[float]:
    return [scale * growth**i for i in range(count)]


LATENCY_BUCKETS = exponential_buckets(10, 1.8, 33)
EXAMPLE_COUNT_BUCKETS = exponential_buckets(1, 2, 15)
DEFAULT_PATH = "/monitoring/prometheus/metrics"


def _name(path: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", ":", path)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.6g}"


class Counter:
    def __init__(self, path: str, labels: Sequence[str]) -> None:
        self.path, self.label_names = path, tuple(labels)
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, *labels: str, amount: float = 1) -> None:
        self.values[labels] = self.values.get(labels, 0) + amount

    def render(self) -> list[str]:
        name = _name(self.path)
        lines = [f"# TYPE {name} counter"]
        for key in sorted(self.values):
            lines.append(f"{name}{_labels(self.label_names, key)} {_number(self.values[key])}")
        return lines


class Histogram:
    def __init__(self, path: str, labels: Sequence[str], limits: Sequence[float]) -> None:
        self.path, self.label_names, self.limits = path, tuple(labels), list(limits)
        self.cells: dict[tuple[str, ...], list[float]] = {}  # bucket counts..., sum

    def observe(self, value: float, *labels: str) -> None:
        cell = self.cells.setdefault(labels, [0.0] * (len(self.limits) + 2))
        cell[bisect.bisect_right(self.limits, value)] += 1  # [lower, upper)
        cell[-1] += value

    def render(self) -> list[str]:
        name = _name(self.path)
        lines = [f"# TYPE {name} histogram"]
        for key in sorted(self.cells):
            cell = self.cells[key]
            cumulative = 0.0
            for limit, count in zip([*self.limits, None], cell[:-1], strict=True):
                cumulative += count
                le = "+Inf" if limit is None else f"{limit:.6g}"
                labels = _labels(self.label_names, key, 'le="' + le + '"')
                lines.append(f"{name}_bucket{labels} {_number(cumulative)}")
            lines.append(f"{name}_sum{_labels(self.label_names, key)} {_number(cell[-1])}")
            lines.append(f"{name}_count{_labels(self.label_names, key)} {_number(cumulative)}")
        return lines


class ServingMetrics:
    """The metrics TF Serving exports that the devserver reproduces."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.request_count = Counter("/tensorflow/serving/request_count", ["model_name", "status"])
        self.request_latency = Histogram("/tensorflow/serving/request_latency",
                                         ["model_name", "API", "entrypoint"], LATENCY_BUCKETS)
        self.runtime_latency = Histogram("/tensorflow/serving/runtime_latency",
                                         ["model_name", "API", "runtime"], LATENCY_BUCKETS)
        self.example_counts = Histogram("/tensorflow/serving/request_example_counts", ["model"],
                                        EXAMPLE_COUNT_BUCKETS)
        self.example_count_total = Counter("/tensorflow/serving/request_example_count_total",
                                           ["model"])
        self.load_attempts = Counter("/tensorflow/cc/saved_model/load_attempt_count",
                                     ["model_path", "status"])
        self.load_latency = Counter("/tensorflow/cc/saved_model/load_latency", ["model_path"])

    def request(self, model: str, status: str, api: str, entrypoint: str,
                latency_us: float) -> None:
        with self._lock:
            self.request_count.inc(model, status)
            if status == "OK":
                self.request_latency.observe(latency_us, model, api, entrypoint)

    def runtime(self, model: str, api: str, runtime: str, latency_us: float) -> None:
        with self._lock:
            self.runtime_latency.observe(latency_us, model, api, runtime)

    def examples(self, model: str, count: int) -> None:
        with self._lock:
            self.example_counts.observe(count, model)
            self.example_count_total.inc(model, amount=count)

    def load(self, model_path: str, ok: bool, latency_us: float) -> None:
        with self._lock:
            self.load_attempts.inc(model_path, "success" if ok else "fail")
            if ok:
                self.load_latency.inc(model_path, amount=int(latency_us))

    def exposition(self) -> str:
        with self._lock:
            families: list[Counter | Histogram] = [
                self.load_attempts, self.load_latency, self.example_count_total,
                        self.example_counts, self.request_count, self.request_latency,
                        self.runtime_latency]
            families.sort(key=lambda f: f.path)
            return "\n".join(line for f in families for line in f.render()) + "\n"


def read_monitoring_config(path: str) -> str | None:
    """Prometheus path from a text MonitoringConfig, or None when not enabled.

    ``monitoring_config.proto`` is not shipped in tensorflow-serving-api, so the two fields are
    read by hand: ``prometheus_config { enable: true path: "..." }``.
    """
    text = Path(path).read_text()
    if not re.search(r"prometheus_config\s*:?\s*\{", text):
        raise ValueError(f"{path}: expected prometheus_config {{ enable: ... }}")
    enabled = re.search(r"\benable\s*:\s*(true|false|1|0)\b", text)
    if not enabled or enabled.group(1) in ("false", "0"):
        return None
    path_match = re.search(r'\bpath\s*:\s*"([^"]*)"', text)
    return path_match.group(1) if path_match and path_match.group(1) else DEFAULT_PATH
