"""Runs the detectors on the live probe samples and publishes their findings.

Roles: when the status probe can read labels (the server's model config file), the versions
labelled ``stable`` and ``canary`` are compared; otherwise, with two AVAILABLE versions, the
lower is stable and the higher (the one unlabeled requests reach) the canary. When the stable
version changes, a baseline detector compares the new one with the previous one's recent
samples. Findings are evaluated every ``EVALUATE_SECONDS``, exported as metrics, served at
``GET /api/v1/findings`` and journaled when a verdict changes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from tfwarden.core.clock import Clock
from tfwarden.core.series import SeriesWindows
from tfwarden.core.types import Finding, Sample
from tfwarden.daemon.backtest import detection_settings
from tfwarden.daemon.config import Config
from tfwarden.daemon.recorder import Recorder
from tfwarden.detectors.errors import BurnRate, CanaryErrors
from tfwarden.detectors.latency import BaselineLatency, CanaryLatency, LatencySLO
from tfwarden.detectors.memory import MemoryLeak

log = logging.getLogger("tfwarden.detection")
EVALUATE_SECONDS = 2.0
Key = tuple[str, str, Any]


class DetectionSupervisor:
    """Owns the detectors of one configuration generation."""

    def __init__(self, config: Config, recorder: Recorder, clock: Clock, windows: SeriesWindows,
                 journal: Callable[[str, dict[str, Any], str | None], object]) -> None:
        self.settings, self.availability = detection_settings(config)
        self.config, self.recorder, self.clock, self.windows = config, recorder, clock, windows
        self.journal = journal
        self.detectors: dict[Key, Any] = {}
        self.findings: dict[Key, Finding] = {}
        self.roles: dict[str, tuple[int | None, int | None]] = {}  # model -> (stable, canary)
        self.external: dict[Key, tuple[Finding, float]] = {}  # from Alertmanager, with expiry
        for target in config.memory:
            self.detectors[("memory", target.name, None)] = MemoryLeak(target.name,
                                                                       self.settings.memory)

    def observe(self, sample: Sample) -> None:
        if sample.metric == "rss_bytes" and sample.source == "promql":
            key: Key = ("memory", sample.target, None)  # remote memory from Prometheus
            if key not in self.detectors:
                self.detectors[key] = MemoryLeak(sample.target, self.settings.memory)
        if sample.metric == "latency_ms" and sample.version is not None:
            self._burn(sample.model, sample.version)
        elif sample.metric in ("serving_requests", "serving_errors"):
            # Serving's own request counter: model-wide (no version label), all clients
            burn = self._burn(sample.model, None)
            burn.add(sample.t, sample.value if sample.metric == "serving_requests" else 0.0,
                     sample.value if sample.metric == "serving_errors" else 0.0)
            return
        for detector in self.detectors.values():
            detector.observe(sample)

    def _burn(self, model: str, version: int | None) -> BurnRate:
        key: Key = ("burn", model, version)
        if key not in self.detectors:
            self.detectors[key] = BurnRate(model, version, self.availability.get(model, 0.999))
        detector: BurnRate = self.detectors[key]
        return detector

    def update_roles(self, model: str, versions: list[dict[str, Any]],
                     labels: dict[str, int] | None) -> None:
        """Follow the status probe: which version is stable and which is the canary."""
        available = sorted(v["version"] for v in versions if v["state"] == "AVAILABLE")
        stable = canary = None
        if labels and labels.get("stable") in available:
            stable = labels["stable"]
            if labels.get("canary") in available and labels["canary"] != stable:
                canary = labels["canary"]
        elif available:
            stable = available[0]
            canary = available[-1] if len(available) > 1 else None
        previous = self.roles.get(model, (None, None))
        if previous == (stable, canary):
            return
        self.roles[model] = (stable, canary)
        log.info("model %s: stable version %s, canary %s", model, stable, canary)
        self._drop(("latency", model, "canary"))
        self._drop(("errors", model, "canary"))
        self._drop(("latency", model, "slo"))
        entry = next((m for m in self.config.models if m.name == model), None)
        if stable is not None and entry is not None and entry.slo.latency_p99_ms is not None:
            self.detectors[("latency", model, "slo")] = LatencySLO(model, stable,
                                                                   entry.slo.latency_p99_ms)
        if stable is not None and canary is not None:
            self.detectors[("latency", model, "canary")] = CanaryLatency(
                model, stable, canary, self.settings.latency)
            self.detectors[("errors", model, "canary")] = CanaryErrors(
                model, stable, canary, self.settings.errors)
        if previous[0] is not None and stable is not None and stable != previous[0]:
            since = self.clock.now() - self.settings.latency.baseline_seconds
            baseline = [s.value for s in self.windows.window(model, previous[0], "latency_ms",
                                                             since=since) if s.ok]
            self.detectors[("latency", model, "baseline")] = BaselineLatency(
                model, stable, baseline, self.settings.latency)

    def _drop(self, key: Key) -> None:
        self.detectors.pop(key, None)
        self.findings.pop(key, None)

    async def evaluate(self) -> None:
        now = self.clock.now()
        for key, detector in list(self.detectors.items()):
            self.publish(key, detector.evaluate(now))

    def publish(self, key: Key, finding: Finding) -> None:
        """A detector's latest finding (also from the drift checks): kept, exported, journaled
        and logged when its verdict changes."""
        previous = self.findings.get(key)
        self.findings[key] = finding
        self.recorder.finding(finding)
        if previous is None or previous.verdict != finding.verdict:
            self.journal("finding", finding.to_json(), finding.model or None)
            level = logging.WARNING if finding.verdict == "regression" else logging.INFO
            log.log(level, "%s %s %s%s: %s %s", finding.detector, finding.model or finding.target,
                    finding.target if finding.model else "",
                    "" if finding.version is None else f" v{finding.version}", finding.verdict,
                    finding.reason)

    def role_versions(self, model: str) -> tuple[int | None, int | None]:
        return self.roles.get(model, (None, None))

    def add_external(self, finding: Finding, expires_at: float, identity: str = "") -> None:
        """A finding received from outside (an Alertmanager alert, ``identity`` its label set),
        valid until expiry."""
        key: Key = (finding.detector, finding.model, f"{finding.target}|{identity}")
        previous = self.external.get(key)
        self.external[key] = (finding, expires_at)
        if previous is None or previous[0].verdict != finding.verdict:
            self.journal("finding", finding.to_json(), finding.model or None)
        self.recorder.finding(finding)

    def all_findings(self) -> list[Finding]:
        now = self.clock.now()
        for key in [k for k, (_, expires) in self.external.items() if expires < now]:
            del self.external[key]
        return [*self.findings.values(), *(f for f, _ in self.external.values())]

    def current(self) -> list[dict[str, Any]]:
        return [f.to_json() for f in sorted(self.all_findings(),
                                            key=lambda f: (f.detector, f.model, str(f.version),
                                                           f.target))]
