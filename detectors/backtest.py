"""Replay a trace through the same detectors the daemon runs and report verdict changes.

Roles come from ``deploy`` events: a canary deploy starts canary-vs-stable latency and error
detectors; a stable deploy (promotion or a direct deploy) starts a baseline latency detector
against the previous stable version's last ``baseline_seconds`` of samples. Every version gets an
SLO burn-rate detector on its probe outcomes and every memory target a leak detector. After each
event the detectors it reached are evaluated; a finding is reported when its verdict changes.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from tfwarden.core.types import Finding, Sample
from tfwarden.detectors.errors import BurnRate, CanaryErrors, ErrorSettings
from tfwarden.detectors.latency import BaselineLatency, CanaryLatency, LatencySettings
from tfwarden.detectors.memory import MemoryLeak, MemorySettings
from tfwarden.detectors.trace import TraceEvent


@dataclass(frozen=True)
class DetectionSettings:
    latency: LatencySettings = field(default_factory=LatencySettings)
    errors: ErrorSettings = field(default_factory=ErrorSettings)
    memory: MemorySettings = field(default_factory=MemorySettings)
    availability: float = 0.999


@dataclass
class _Model:
    stable: int | None = None
    canary: int | None = None
    history: dict[int, deque[tuple[float, float]]] = field(default_factory=dict)


class Backtest:
    def __init__(self, settings: DetectionSettings | None = None,
                 availability: dict[str, float] | None = None) -> None:
        self.settings = settings or DetectionSettings()
        self.availability = availability or {}
        self.models: dict[str, _Model] = {}
        self.detectors: dict[tuple[str, str, Any], Any] = {}
        self.last_verdict: dict[tuple[str, str, Any], str] = {}
        self.current: dict[tuple[str, str, Any], Finding] = {}
        self.counts: Counter[str] = Counter()
        self.events = 0

    def feed(self, event: TraceEvent) -> Iterator[Finding]:
        """Process one event; yield findings whose verdict changed."""
        self.events += 1
        if event.type == "deploy":
            self._deploy(event)
            return
        if event.type == "latency":
            model = self.models.setdefault(event.model, _Model())
            assert event.version is not None
            if model.stable is None:
                model.stable = event.version
            outcome = "ok" if event.ok else "error"
            sample = Sample(event.t, "trace", "latency_ms", event.ms, model=event.model,
                            version=event.version, ok=event.ok, labels={"outcome": outcome})
            history = model.history.setdefault(event.version, deque(maxlen=20_000))
            if event.ok:
                history.append((event.t, event.ms))
            keys = self._latency_keys(event.model, event.version)
        else:
            keys = [("memory", event.target, None)]
            if keys[0] not in self.detectors:
                self.detectors[keys[0]] = MemoryLeak(event.target, self.settings.memory)
            sample = Sample(event.t, "trace", "rss_bytes", event.rss_bytes, target=event.target)
            if event.limit_bytes is not None:
                self.detectors[keys[0]].observe(Sample(event.t, "trace", "limit_bytes",
                                                       event.limit_bytes, target=event.target))
        for key in keys:
            detector = self.detectors[key]
            detector.observe(sample)
            finding = detector.evaluate(event.t)
            self.current[key] = finding
            if self.last_verdict.get(key) != finding.verdict:
                self.last_verdict[key] = finding.verdict
                self.counts[finding.verdict] += 1
                yield finding

    def _latency_keys(self, model_name: str, version: int) -> list[tuple[str, str, Any]]:
        burn_key = ("burn", model_name, version)
        if burn_key not in self.detectors:
            self.detectors[burn_key] = BurnRate(model_name, version,
                                                self.availability.get(model_name,
                                                                      self.settings.availability))
        return [k for k in self.detectors if k[1] == model_name and k[0] != "memory"]

    def _deploy(self, event: TraceEvent) -> None:
        model = self.models.setdefault(event.model, _Model())
        assert event.version is not None
        for kind in ("latency", "errors"):
            self._drop((kind, event.model, "canary"))
        if event.role == "canary":
            if model.stable is None or model.stable == event.version:
                return  # nothing to compare with yet
            model.canary = event.version
            self.detectors[("latency", event.model, "canary")] = CanaryLatency(
                event.model, model.stable, event.version, self.settings.latency)
            self.detectors[("errors", event.model, "canary")] = CanaryErrors(
                event.model, model.stable, event.version, self.settings.errors)
            return
        previous, model.stable, model.canary = model.stable, event.version, None
        self._drop(("latency", event.model, "baseline"))
        if previous is not None and previous != event.version:
            horizon = event.t - self.settings.latency.baseline_seconds
            baseline = [ms for t, ms in model.history.get(previous, ()) if horizon <= t <= event.t]
            self.detectors[("latency", event.model, "baseline")] = BaselineLatency(
                event.model, event.version, baseline, self.settings.latency)

    def _drop(self, key: tuple[str, str, Any]) -> None:
        self.detectors.pop(key, None)
        self.last_verdict.pop(key, None)
        self.current.pop(key, None)

    def roles(self) -> dict[str, tuple[int | None, int | None]]:
        """(stable, canary) version of every model, as the trace's deploys left them."""
        return {name: (m.stable, m.canary) for name, m in self.models.items()}
