"""Replay a trace through the same roster of detectors the daemon runs; report verdict changes.

Roles come from ``deploy`` events (the first version seen is stable until one says otherwise):
a canary deploy starts canary-vs-stable latency and error detectors; a stable deploy (promotion
or a direct deploy) starts a baseline latency detector against the previous stable version's
last ``baseline_seconds`` of samples. Every version gets an SLO burn-rate detector on its probe
outcomes and every memory target a leak detector. After each event the detectors it reached are
evaluated at the event's time; a finding is reported when its verdict changes. ``version``
events (a version loaded or unloaded on a memory target) go to that target's memory detectors.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping

from tfwarden.core.clock import ManualClock
from tfwarden.core.ports import FindingKey
from tfwarden.core.series import SeriesWindows
from tfwarden.core.types import Finding, Sample
from tfwarden.detectors.roles import Pair, RoleTracker
from tfwarden.detectors.roster import DetectionSettings, ModelObjectives, Roster
from tfwarden.detectors.trace import TraceEvent


class Backtest:
    def __init__(self, settings: DetectionSettings | None = None,
                 objectives: Mapping[str, ModelObjectives] | None = None) -> None:
        self.clock = ManualClock()
        self.windows = SeriesWindows(max_age_seconds=float("inf"))
        self.roles = RoleTracker()
        self.roster = Roster(settings or DetectionSettings(), objectives or {}, {},
                             self.windows, self.clock)
        self.roles.subscribe(self.roster)
        self.counts: Counter[str] = Counter()
        self.events = 0

    @property
    def current(self) -> dict[FindingKey, Finding]:
        """The latest finding of every detector."""
        return self.roster.latest

    def feed(self, event: TraceEvent) -> Iterator[Finding]:
        """Process one event; yield findings whose verdict changed."""
        self.events += 1
        self.clock.set(event.t)
        if event.type == "deploy":
            assert event.version is not None
            self.roles.deployed(event.model, event.version, event.role)
            return
        if event.type == "latency":
            assert event.version is not None
            if self.roles.roles(event.model)[0] is None:
                self.roles.deployed(event.model, event.version, "stable")
            sample = Sample(event.t, "trace", "latency_ms", event.ms, model=event.model,
                            version=event.version, ok=event.ok,
                            labels={"outcome": "ok" if event.ok else "error"})
            self.windows.add(sample)
            keys = self.roster.observe(sample)
        elif event.type == "version":
            assert event.version is not None
            keys = self.roster.version_event(event.target, event.model, event.version,
                                             event.state, event.t)
        else:
            keys = self.roster.observe(Sample(event.t, "trace", "rss_bytes", event.rss_bytes,
                                              target=event.target))
            if event.limit_bytes is not None:
                self.roster.observe(Sample(event.t, "trace", "limit_bytes", event.limit_bytes,
                                           target=event.target))
        for finding in self.roster.evaluate(event.t, keys):
            self.counts[finding.verdict] += 1
            yield finding

    def all_roles(self) -> dict[str, Pair]:
        """(stable, canary) version of every model, as the trace's deploys left them."""
        return self.roles.all()
