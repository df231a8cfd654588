"""The detector roster: which detectors exist for which model version, role or target, and the
latest finding of each. One roster serves the daemon and ``tfwarden backtest``.

- Every probed version gets an SLO burn-rate detector on its probe outcomes, and each model one
  on Serving's own request counter (model-wide: no Serving metric has a version label).
- While a model has a stable and a canary (``RoleTracker``), canary-vs-stable latency and error
  detectors compare them; when the stable version changes, a baseline detector compares the new
  one with the previous one's recent samples (from the series windows); with
  ``slo.latency_p99_ms`` the stable version's p99 is judged against it.
- Every memory target (configured, or named by a PromQL query giving ``rss_bytes``) gets a leak
  detector and a retention detector; ``version_event`` tells them a version was loaded or
  unloaded there (the leak detector re-bases its level, the retention one judges the unload).
- Findings also come from outside the detectors: the drift checks publish theirs, and alerts
  received from Alertmanager become findings until they expire.

The latest finding of each detector is kept, exported as metrics, and journaled when its verdict
changes. ``reconfigure`` keeps the detectors (and their evidence) of every model whose settings
did not change.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import Field

from tfwarden.core.clock import Clock
from tfwarden.core.errors import StateError
from tfwarden.core.events import VerdictChanged
from tfwarden.core.ports import FindingKey, FindingMetrics, Journal
from tfwarden.core.series import SeriesWindows
from tfwarden.core.settings import Settings
from tfwarden.core.types import REGRESSION, Finding, Sample
from tfwarden.detectors.errors import BurnRate, CanaryErrors, ErrorSettings
from tfwarden.detectors.latency import BaselineLatency, CanaryLatency, LatencySettings, LatencySLO
from tfwarden.detectors.memory import MemoryLeak, MemoryRetention, MemorySettings
from tfwarden.detectors.roles import Pair

log = logging.getLogger("tfwarden.detection")
_NONE: set[FindingKey] = set()
MEMORY_KINDS = ("memory", "memory_retention")


class Detector(Protocol):
    def observe(self, sample: Sample) -> None: ...

    def evaluate(self, now: float) -> Finding: ...


class DetectionSettings(Settings):
    """Detector settings shared by every model (``detection`` in the configuration)."""

    latency: LatencySettings = LatencySettings()
    errors: ErrorSettings = ErrorSettings()
    memory: MemorySettings = MemorySettings()


class ModelObjectives(Settings):
    """Service level objectives of one model (``models[].slo``)."""

    availability: float = Field(0.999, gt=0.5, lt=1, description="Target success ratio.")
    latency_p99_ms: float | None = Field(None, gt=0)
    latency_p50_ms: float | None = Field(None, gt=0)
    window_days: int = Field(28, ge=1, le=90)


@dataclass
class _External:
    finding: Finding
    expires_at: float


@dataclass
class Roster:
    """Detectors and their findings (see the module docstring)."""

    settings: DetectionSettings
    objectives: Mapping[str, ModelObjectives]
    memory_targets: Mapping[str, object]  # name -> its settings (a change restarts its detector)
    windows: SeriesWindows
    clock: Clock
    journal: Journal | None = None
    metrics: FindingMetrics | None = None
    detectors: dict[FindingKey, Detector] = field(default_factory=dict)
    latest: dict[FindingKey, Finding] = field(default_factory=dict)
    external: dict[FindingKey, _External] = field(default_factory=dict)
    _by_subject: dict[str, set[FindingKey]] = field(default_factory=dict)
    _roles: dict[str, Pair] = field(default_factory=dict)
    _configured_targets: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.objectives = dict(self.objectives)
        self._configured_targets = dict(self.memory_targets)
        for target in self._configured_targets:
            self._add_memory(target)

    # -- samples -----------------------------------------------------------------------------
    def observe(self, sample: Sample) -> set[FindingKey]:
        """Feed one sample to the detectors it concerns; returns their keys."""
        if sample.metric == "rss_bytes" and sample.source in ("promql", "trace"):
            if ("memory", sample.target, None) not in self.detectors:  # found by its samples
                self._add_memory(sample.target)
        if sample.metric in ("serving_requests", "serving_errors"):
            # Serving's own request counter: model-wide (no version label), all clients
            burn = self._burn(sample.model, None)
            burn.add(sample.t, sample.value if sample.metric == "serving_requests" else 0.0,
                     sample.value if sample.metric == "serving_errors" else 0.0)
            return {("burn", sample.model, None)}
        if sample.metric == "latency_ms" and sample.version is not None:
            self._burn(sample.model, sample.version)
        keys = self._by_subject.get(sample.model, _NONE)
        if sample.target in self._by_subject:
            keys = keys | self._by_subject[sample.target]
        for key in keys:
            self.detectors[key].observe(sample)
        return keys

    def version_event(self, target: str | None, model: str, version: int, state: str,
                      t: float) -> set[FindingKey]:
        """Version ``version`` of ``model`` was ``loaded`` or ``unloaded`` at ``t`` on memory
        target ``target`` (None: every memory target); returns the keys of the memory
        detectors told."""
        keys = {key for key in self.detectors if key[0] in MEMORY_KINDS and (
            target is None or key[1] == target)}
        for key in keys:
            handler = getattr(self.detectors[key], "version_event", None)
            if handler is not None:
                handler(model, version, state, t)
        return keys

    def _add_memory(self, target: str) -> None:
        self._add(("memory", target, None), MemoryLeak(target, self.settings.memory))
        self._add(("memory_retention", target, None), MemoryRetention(target, self.settings.memory))

    def _burn(self, model: str, version: int | None) -> BurnRate:
        key: FindingKey = ("burn", model, version)
        detector = self.detectors.get(key)
        if not isinstance(detector, BurnRate):
            detector = BurnRate(model, version, self._objectives(model).availability)
            self._add(key, detector)
        return detector

    def _objectives(self, model: str) -> ModelObjectives:
        return self.objectives.get(model) or ModelObjectives()

    # -- roles -------------------------------------------------------------------------------
    def roles_changed(self, model: str, previous: Pair, current: Pair) -> None:
        """Rebuild the comparisons of ``model`` for its new (stable, canary)."""
        self._roles[model] = current
        (stable, canary), old_stable = current, previous[0]
        for part in ("canary", "slo"):
            self._drop(("latency", model, part))
        self._drop(("errors", model, "canary"))
        for key in [k for k in self.detectors if k[0] == "burn" and k[1] == model
                    and k[2] is not None and k[2] not in (stable, canary)]:
            self._drop(key)  # a version without a role (rolled back, replaced): its samples
            # stopped, and its last burn verdict would stand forever; new samples add it again
        self._compare(model, stable, canary)
        if old_stable is not None and stable is not None and stable != old_stable:
            since = self.clock.now() - self.settings.latency.baseline_seconds
            baseline = [s.value for s in self.windows.window(model, old_stable, "latency_ms",
                                                             since=since) if s.ok]
            self._add(("latency", model, "baseline"),
                      BaselineLatency(model, stable, baseline, self.settings.latency))

    def _compare(self, model: str, stable: int | None, canary: int | None) -> None:
        """Add the comparisons the roles call for (those already there stay)."""
        objective = self._objectives(model).latency_p99_ms
        wanted: dict[FindingKey, Callable[[], Detector]] = {}
        if stable is not None and objective is not None:
            wanted[("latency", model, "slo")] = lambda: LatencySLO(model, stable, objective)
        if stable is not None and canary is not None:
            wanted[("latency", model, "canary")] = lambda: CanaryLatency(
                model, stable, canary, self.settings.latency)
            wanted[("errors", model, "canary")] = lambda: CanaryErrors(
                model, stable, canary, self.settings.errors)
        for key, make in wanted.items():
            if key not in self.detectors:
                self._add(key, make())

    # -- findings ----------------------------------------------------------------------------
    async def prepare(self, now: float) -> None:
        """Let detectors with heavy work for ``evaluate(now)`` do it in a thread first."""
        for key in list(self.detectors):
            prepare = getattr(self.detectors.get(key), "prepare", None)
            if prepare is not None:
                await prepare(now)

    def evaluate(self, now: float, keys: Iterable[FindingKey] | None = None) -> list[Finding]:
        """Evaluate the detectors (all, or ``keys``); returns the findings whose verdict
        changed."""
        changed = []
        for key in list(self.detectors) if keys is None else keys:
            detector = self.detectors.get(key)
            if detector is not None and self.publish(key, detector.evaluate(now)):
                changed.append(self.latest[key])
        return changed

    def publish(self, key: FindingKey, finding: Finding) -> bool:
        """Keep ``finding`` as the latest under ``key``; export it; journal and log it when its
        verdict changed (returns whether it did)."""
        previous = self.latest.get(key)
        self.latest[key] = finding
        if self.metrics is not None:
            self.metrics.finding(finding, key)
        if previous is not None and previous.verdict == finding.verdict:
            return False
        self._changed(finding)
        return True

    def add_external(self, finding: Finding, expires_at: float, identity: str = "") -> None:
        """A finding received from outside (an Alertmanager alert, ``identity`` its label set),
        valid until ``expires_at``."""
        key: FindingKey = (finding.detector, finding.model, f"{finding.target}|{identity}")
        previous = self.external.get(key)
        self.external[key] = _External(finding, expires_at)
        if self.metrics is not None:
            self.metrics.finding(finding)
        if previous is None or previous.finding.verdict != finding.verdict:
            self._changed(finding)

    def _changed(self, finding: Finding) -> None:
        if self.journal is not None:
            try:
                self.journal.record(VerdictChanged(finding))
            except StateError as exc:  # the store is away: the change is logged, judging goes on
                log.warning("verdict change not journaled: %s", exc)
            level = logging.WARNING if finding.verdict == REGRESSION else logging.INFO
            log.log(level, "%s %s %s%s: %s %s", finding.detector, finding.model or finding.target,
                    finding.target if finding.model else "",
                    "" if finding.version is None else f" v{finding.version}", finding.verdict,
                    finding.reason)

    def findings(self) -> list[Finding]:
        """Every current finding (expired external ones are forgotten)."""
        now = self.clock.now()
        for key in [k for k, e in self.external.items() if e.expires_at < now]:
            del self.external[key]
        return [*self.latest.values(), *(e.finding for e in self.external.values())]

    def to_json(self) -> list[dict[str, Any]]:
        return [f.to_json() for f in sorted(self.findings(), key=lambda f: (
            f.detector, f.model, str(f.version), f.target))]

    # -- configuration -----------------------------------------------------------------------
    def reconfigure(self, settings: DetectionSettings, objectives: Mapping[str, ModelObjectives],
                    memory_targets: Mapping[str, object], drift_models: Iterable[str]) -> None:
        """New settings in place: detectors whose settings did not change keep their evidence;
        models no longer configured lose theirs (drift findings included), and so does a
        memory target removed or pointed elsewhere."""
        old, old_objectives = self.settings, self.objectives
        self.settings, self.objectives = settings, dict(objectives)
        targets, drifting = dict(memory_targets), set(drift_models)
        removed_targets = {name for name, target in self._configured_targets.items()
                           if targets.get(name) != target}
        for key in list(self.latest.keys() | self.detectors.keys()):
            kind, subject, part = key
            same = old_objectives.get(subject) == self.objectives.get(subject)
            stale = {
                "memory": old.memory != settings.memory or subject in removed_targets,
                "memory_retention": old.memory != settings.memory or subject in removed_targets,
                "burn": subject not in self.objectives or not same,
                "latency": subject not in self.objectives or (
                    not same if part == "slo" else old.latency != settings.latency),
                "errors": subject not in self.objectives or old.errors != settings.errors,
                "drift": subject not in drifting,
                "performance": subject not in drifting,  # published by the drift checks
            }.get(kind, False)
            if stale:
                self._drop(key)
        self._configured_targets = targets
        for target in targets:
            if ("memory", target, None) not in self.detectors:
                self._add_memory(target)
        self._roles = {m: pair for m, pair in self._roles.items() if m in self.objectives}
        for model, (stable, canary) in self._roles.items():
            self._compare(model, stable, canary)

    def _add(self, key: FindingKey, detector: Detector) -> None:
        self.detectors[key] = detector
        self._by_subject.setdefault(key[1], set()).add(key)

    def _drop(self, key: FindingKey) -> None:
        self.detectors.pop(key, None)
        finding = self.latest.pop(key, None)
        if finding is not None and self.metrics is not None:
            self.metrics.forget_finding(finding.detector, finding.model or "", finding.target, key)
        self._by_subject.get(key[1], set()).discard(key)
