"""PromQL probe: instant queries against a Prometheus server, turned into samples.

For remote fleets where tfwarden cannot read /proc or cgroups itself (container memory from
cAdvisor, Serving metrics already scraped by Prometheus). Each series of an instant vector
becomes one Sample; ``target_label`` names the series label whose value is the sample's target.
A scalar result becomes one sample. Errors (unreachable server, bad query, non-numeric values)
are a failed ProbeResult, never an exception.
"""

from __future__ import annotations

import math
import time
from typing import Any

import httpx

from tfwarden.core.clock import Clock, SystemClock
from tfwarden.core.settings import default
from tfwarden.core.types import ProbeResult, Sample
from tfwarden.probes.settings import PromQLSettings

SOURCE = "promql"


class PromQLProbe:
    def __init__(self, name: str, base_url: str, query: str, metric: str, client: httpx.AsyncClient,
                 *, target_label: str = "", model: str = "",
                 timeout_seconds: float = default(PromQLSettings, "timeout_seconds"),
                 clock: Clock | None = None) -> None:
        self.name = f"promql:{name}"
        self.query_name, self.query, self.metric = name, query, metric
        self.url = base_url.rstrip("/") + "/api/v1/query"
        self.target_label, self.model = target_label, model
        self._client = client
        self._timeout = timeout_seconds
        self._clock = clock or SystemClock()

    async def run(self) -> ProbeResult:
        t, started = self._clock.now(), time.monotonic()
        try:
            response = await self._client.get(self.url, params={"query": self.query},
                                              timeout=self._timeout)
            body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            return self._failed(t, started, f"query failed: {exc}")
        if body.get("status") != "success":
            return self._failed(t, started, f"Prometheus: {body.get('errorType', 'error')}: "
                                            f"{body.get('error', response.status_code)}")
        try:
            samples = self._samples(body["data"], t)
        except (KeyError, TypeError, ValueError) as exc:
            return self._failed(t, started, f"unexpected result: {exc}")
        return ProbeResult(self.name, self.query_name, t, True, time.monotonic() - started,
                           samples=tuple(samples), detail={"series": len(samples)})

    def _samples(self, data: dict[str, Any], t: float) -> list[Sample]:
        kind = data["resultType"]
        if kind == "scalar":
            return [self._sample(t, {}, data["result"][1])]
        if kind != "vector":
            raise ValueError(f"expected an instant vector or scalar, got {kind}")
        return [self._sample(t, series["metric"], series["value"][1]) for series in data["result"]]

    def _sample(self, t: float, labels: dict[str, str], raw: str) -> Sample:
        value = float(raw)
        if not math.isfinite(value):
            raise ValueError(f"non-finite value {raw!r}")
        target = labels.get(self.target_label, "") if self.target_label else self.query_name
        model = self.model or labels.get("model_name", "")
        return Sample(t, SOURCE, self.metric, value, model=model, target=target or self.query_name,
                      labels=dict(labels))

    def _failed(self, t: float, started: float, error: str) -> ProbeResult:
        return ProbeResult(self.name, self.query_name, t, False, time.monotonic() - started,
                           error=error)
