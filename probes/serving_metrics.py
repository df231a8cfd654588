"""Serving metrics probe: scrape TF Serving's Prometheus page and derive per-model rates.

TF Serving's page has names like ``:tensorflow:serving:request_count`` (TYPE lines only, no
``_total``), which prometheus_client's text parser reads (reporting counter samples as
``..._total``). From two consecutive scrapes the probe derives, per model: requests and errors
in the interval (a counter that went down means the server restarted: the new value is the
delta), request rate, error ratio by status, and latency quantiles from the microsecond
``request_latency`` histogram (successful requests only; GET status/metadata calls, API ``""``,
are left out of latency but, a TF Serving quirk, counted in ``request_count``). No TF Serving
metric has a version label: these are server-wide per model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tfwarden.core.clock import Clock, SystemClock
from tfwarden.core.settings import default
from tfwarden.core.types import ProbeResult, Sample
from tfwarden.serving.tfserving.settings import EndpointSettings

REQUEST_COUNT = ":tensorflow:serving:request_count"
REQUEST_LATENCY = ":tensorflow:serving:request_latency"
SOURCE = "serving_metrics"


@dataclass
class Scrape:
    """Cumulative values of one scrape, per model."""

    t: float
    requests: dict[str, dict[str, float]] = field(default_factory=dict)  # model -> status -> n
    buckets: dict[str, dict[float, float]] = field(default_factory=dict)  # model -> le(us) -> n


def parse_page(text: str, t: float) -> Scrape:
    scrape = Scrape(t)
    for family in text_string_to_metric_families(text):
        if family.name == REQUEST_COUNT:
            for s in family.samples:
                if s.name.endswith(("_total", REQUEST_COUNT)):
                    model = s.labels.get("model_name", "")
                    status = s.labels.get("status", "")
                    by_status = scrape.requests.setdefault(model, {})
                    by_status[status] = by_status.get(status, 0.0) + s.value
        elif family.name == REQUEST_LATENCY:
            for s in family.samples:
                if s.name.endswith("_bucket") and s.labels.get("API", ""):
                    model = s.labels.get("model_name", "")
                    le = float("inf") if s.labels["le"] == "+Inf" else float(s.labels["le"])
                    by_le = scrape.buckets.setdefault(model, {})
                    by_le[le] = by_le.get(le, 0.0) + s.value
    return scrape


def _delta(new: float, old: float | None) -> float:
    if old is None or new < old:  # first sight, or the counter reset (server restart)
        return new if old is not None else 0.0
    return new - old


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus' histogram_quantile over cumulative (le, count) pairs sorted by le."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    lower_le, lower_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == float("inf"):
                return lower_le
            if count == lower_count:
                return le
            return lower_le + (le - lower_le) * (rank - lower_count) / (count - lower_count)
        lower_le, lower_count = le, count
    return None


class ServingMetricsProbe:
    """Scrapes one TF Serving endpoint's metrics page."""

    def __init__(self, endpoint: str, url: str, client: httpx.AsyncClient, *,
                 timeout_seconds: float = default(EndpointSettings, "timeout_seconds"),
                 clock: Clock | None = None) -> None:
        self.name = f"serving_metrics:{endpoint}"
        self.endpoint, self.url = endpoint, url
        self._client = client
        self._timeout = timeout_seconds
        self._clock = clock or SystemClock()
        self._previous: Scrape | None = None

    async def run(self) -> ProbeResult:
        t, started = self._clock.now(), time.monotonic()
        try:
            response = await self._client.get(self.url, timeout=self._timeout)
            response.raise_for_status()
            scrape = parse_page(response.text, t)
        except (httpx.HTTPError, ValueError) as exc:
            return ProbeResult(self.name, self.endpoint, t, False, time.monotonic() - started,
                               error=f"cannot scrape {self.url}: {exc}")
        previous, self._previous = self._previous, scrape
        if previous is None:
            return ProbeResult(self.name, self.endpoint, t, True, time.monotonic() - started,
                               detail={"note": "first scrape: rates from the next one"})
        samples, detail = derive(previous, scrape)
        return ProbeResult(self.name, self.endpoint, t, True, time.monotonic() - started,
                           samples=tuple(samples), detail=detail)


def derive(previous: Scrape, current: Scrape) -> tuple[list[Sample], dict[str, Any]]:
    """Per-model samples over the interval between two scrapes."""
    seconds = max(current.t - previous.t, 1e-9)
    samples: list[Sample] = []
    detail: dict[str, Any] = {}
    t = current.t
    for model, by_status in current.requests.items():
        old = previous.requests.get(model, {})
        deltas = {status: _delta(n, old.get(status)) for status, n in by_status.items()}
        requests = sum(deltas.values())
        errors = sum(n for status, n in deltas.items() if status != "OK")
        entry: dict[str, Any] = {"requests": requests, "errors": errors,
                                 "request_rate": requests / seconds,
                                 "error_ratio": errors / requests if requests else None,
                                 "errors_by_status": {s: n for s, n in deltas.items()
                                                      if s != "OK" and n}}
        samples += [Sample(t, SOURCE, "serving_requests", requests, model=model),
                    Sample(t, SOURCE, "serving_errors", errors, model=model),
                    Sample(t, SOURCE, "serving_request_rate", requests / seconds, model=model)]
        if requests:
            samples.append(Sample(t, SOURCE, "serving_error_ratio", errors / requests, model=model))
        cumulative = current.buckets.get(model, {})
        old_buckets = previous.buckets.get(model, {})
        interval = sorted((le, _delta(n, old_buckets.get(le))) for le, n in cumulative.items())
        for q in (0.5, 0.9, 0.99):
            value = histogram_quantile(q, interval)
            if value is not None:
                entry[f"latency_p{int(q * 100)}_ms"] = value / 1000
                samples.append(Sample(t, SOURCE, f"serving_latency_p{int(q * 100)}_ms",
                                      value / 1000, model=model))
        detail[model] = entry
    return samples, {"interval_seconds": seconds, "models": detail}
