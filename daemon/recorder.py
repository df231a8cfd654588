"""Every tfwarden metric, created in one place with typed methods (flagger's Recorder).

Tests build a Recorder on a fresh CollectorRegistry and read values with
``registry.get_sample_value``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Hashable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)

disable_created_metrics()  # type: ignore[no-untyped-call] # *_created series double the page and no alert uses them

JOB_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
LOOP_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
# 1-2-5 steps (15 series per probed version with +Inf): the page's biggest part at 1,000 versions.
# Verdicts use the raw samples; these only serve dashboards' histogram_quantile.
PROBE_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10)


class Recorder:
    """tfwarden's own metrics; names are ``tfwarden_*`` with unit suffixes."""

    def __init__(self, registry: CollectorRegistry | None = None, version: str = "") -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._declare_process(self.registry, version)
        self._declare_probes(self.registry)
        self._exported: dict[Hashable, tuple[str, str | None]] = {}
        self._declare_findings(self.registry)
        self._declare_lifecycle(self.registry)
        self._declare_drift(self.registry)

    def _declare_process(self, r: CollectorRegistry, version: str) -> None:
        """The process, its configuration, jobs, journal and HTTP API."""
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self._build_info = Gauge(
            "tfwarden_build_info", "tfwarden build information; value is always 1.",
            ["version"], registry=r)
        self._build_info.labels(version=version).set(1)
        self._start_time = Gauge(
            "tfwarden_start_time_seconds", "Unix time the daemon started.", registry=r)
        self._ready = Gauge(
            "tfwarden_ready", "1 once start-up finished and until shutdown began.", registry=r)
        self._reload_ok = Gauge(
            "tfwarden_config_last_reload_successful",
            "1 if the last configuration (re)load succeeded, 0 if it failed.", registry=r)
        self._reload_time = Gauge(
            "tfwarden_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful configuration (re)load.", registry=r)
        self._generation = Gauge(
            "tfwarden_config_generation",
            "Configuration generation; starts at 1 and grows with each successful reload.",
            registry=r)
        self._reloads = Counter(
            "tfwarden_config_reloads_total", "Configuration reload attempts by outcome.",
            ["outcome"], registry=r)
        self._job_runs = Counter(
            "tfwarden_job_runs_total", "Scheduled job runs by job and outcome.",
            ["job", "outcome"], registry=r)
        self._job_duration = Histogram(
            "tfwarden_job_duration_seconds", "Duration of scheduled job runs.", ["job"],
            buckets=JOB_DURATION_BUCKETS, registry=r)
        self._job_last_success = Gauge(
            "tfwarden_job_last_success_timestamp_seconds",
            "Unix time a job last finished without error.", ["job"], registry=r)
        self._loop_lag = Histogram(
            "tfwarden_event_loop_lag_seconds",
            "How late the event loop woke up (sampled every 0.1 s); high values mean work "
            "blocking the loop.", buckets=LOOP_LAG_BUCKETS, registry=r)
        self._journal_pruned = Counter(
            "tfwarden_journal_pruned_entries_total",
            "Journal entries deleted by retention (the oldest first).", registry=r)
        self._lease_held = Gauge(
            "tfwarden_lease_held", "Replicas on PostgreSQL: 1 while this replica holds the "
            "confirmed lease of a unit, 0 for the configuration's other units.", ["unit"],
            registry=r)
        self._lease_failures = Counter(
            "tfwarden_lease_refresh_failures_total",
            "Lease rounds (claim, renew, give up) that could not reach the state store.",
            registry=r)
        self._lease_units: set[str] = set()
        self._watchdog_pings = Counter(
            "tfwarden_watchdog_pings_total", "WATCHDOG=1 notifications sent to systemd.",
            registry=r)
        self._journal_events = Counter(
            "tfwarden_journal_events_total", "Events appended to the state journal by kind.",
            ["kind"], registry=r)
        self._http_denied = Counter(
            "tfwarden_http_unauthorized_requests_total",
            "Write requests refused for a missing or wrong bearer token.", ["path"], registry=r)

    def _declare_probes(self, r: CollectorRegistry) -> None:
        """Probes and the model versions they see."""
        self._probe_requests = Counter(
            "tfwarden_probe_requests_total",
            "Predict probe requests by outcome (ok, error, incorrect, timeout, unreachable).",
            ["model", "version", "target", "outcome"], registry=r)
        self._probe_latency = Histogram(
            "tfwarden_probe_latency_seconds", "Client-side latency of predict probe requests.",
            ["model", "version", "target"], buckets=PROBE_LATENCY_BUCKETS, registry=r)
        self._probe_skipped = Counter(
            "tfwarden_probe_skipped_total",
            "Predict probe send slots skipped because too many requests were in flight.",
            ["model", "version", "target"], registry=r)
        self._probe_lateness = Histogram(
            "tfwarden_probe_schedule_lateness_seconds",
            "How long after its scheduled slot each predict probe request began (all targets).",
            buckets=LOOP_LAG_BUCKETS, registry=r)
        self._probe_runs = Counter(
            "tfwarden_probe_runs_total", "Status and memory probe runs by outcome.",
            ["probe", "outcome"], registry=r)
        self._version_state = Gauge(
            "tfwarden_model_version_state",
            "TF Serving state of a model version (10 START, 20 LOADING, 30 AVAILABLE, "
            "40 UNLOADING, 50 END).", ["serving", "model", "version"], registry=r)
        self._memory = Gauge(
            "tfwarden_memory_bytes", "Memory of a watched process or cgroup by kind.",
            ["target", "kind"], registry=r)

    def _declare_findings(self, r: CollectorRegistry) -> None:
        """The detectors' findings."""
        self._finding = Gauge(
            "tfwarden_finding",
            "1 for the current verdict of each detector (ok, regression, inconclusive), 0 else.",
            ["detector", "model", "version", "target", "verdict"], registry=r)
        basis = ["detector", "model", "version", "target", "statistic"]
        self._finding_value = Gauge(
            "tfwarden_finding_statistic",
            "The test statistic each current finding was judged on (evidence.value; the "
            "statistic label names it).", basis, registry=r)
        self._finding_threshold = Gauge(
            "tfwarden_finding_threshold",
            "The threshold that statistic is compared with (evidence.threshold).", basis,
            registry=r)
        self._finding_samples = Gauge(
            "tfwarden_finding_samples", "Samples (pairs, rows, bins...) behind each current "
            "finding (evidence.samples).", ["detector", "model", "version", "target"],
            registry=r)
        self._median_ratio = Gauge(
            "tfwarden_latency_median_ratio",
            "Estimated median latency ratio of a version against its comparison.",
            ["model", "version", "target"], registry=r)
        self._leak_slope = Gauge(
            "tfwarden_memory_leak_slope_bytes_per_hour", "Estimated memory growth.",
            ["target"], registry=r)
        self._time_to_limit = Gauge(
            "tfwarden_memory_time_to_limit_seconds",
            "Projected time until a leaking target reaches its memory limit.", ["target"],
            registry=r)

    def _declare_lifecycle(self, r: CollectorRegistry) -> None:
        """Decisions, actions, phases and alert deliveries."""
        self._decisions = Counter(
            "tfwarden_decisions_total", "Policy decisions by model, action and dry run.",
            ["model", "action", "dry_run"], registry=r)
        self._actions = Counter(
            "tfwarden_actions_total", "Lifecycle actions carried out, by outcome.",
            ["model", "action", "outcome"], registry=r)
        self._phase = Gauge(
            "tfwarden_model_phase", "1 for each model's current lifecycle phase, 0 for the others.",
            ["model", "phase"], registry=r)
        self._weight = Gauge(
            "tfwarden_canary_weight_percent", "Traffic share of the canary.", ["model"], registry=r)
        self._edge_phase = Gauge(
            "tfwarden_edge_rollout_phase", "1 for each edge model's rollout phase, 0 for others.",
            ["model", "phase"], registry=r)
        self._edge_percent = Gauge(
            "tfwarden_edge_rollout_percent", "Share of an edge model's devices offered the "
            "candidate.", ["model"], registry=r)
        self._edge_pinned = Gauge(
            "tfwarden_edge_pinned_cohorts", "Cohorts of an edge model pinned to a version.",
            ["model"], registry=r)
        self._edge_actions = Counter(
            "tfwarden_edge_actions_total", "Edge rollout actions by outcome.",
            ["model", "action", "outcome"], registry=r)
        self._notifications = Counter(
            "tfwarden_notifications_total", "Alert deliveries by notifier and outcome.",
            ["notifier", "outcome"], registry=r)

    def _declare_drift(self, r: CollectorRegistry) -> None:
        """Input capture and drift checks."""
        self._drift_p = Gauge(
            "tfwarden_drift_p_value",
            "Adjusted p-value (FDR or Bonferroni) of each input feature in the latest drift check.",
            ["model", "feature"], registry=r)
        self._drift_log_e = Gauge(
            "tfwarden_drift_log_e_value",
            "Largest log e-value of each input feature's sequential drift tests.",
            ["model", "feature"], registry=r)
        self._drift_log_threshold = Gauge(
            "tfwarden_drift_log_e_threshold",
            "Log e-value at which a feature's sequential drift test alarms.", ["model"],
            registry=r)
        self._drift_detected = Gauge(
            "tfwarden_drift_detected",
            "1 while the model's input drift finding says regression (confirmed drift).",
            ["model"], registry=r)
        self._drift_checks = Counter(
            "tfwarden_drift_checks_total", "Input drift checks by result.",
            ["model", "result"], registry=r)
        self._disagreement = Gauge(
            "tfwarden_drift_disagreement_ratio",
            "Share of captured rows on which the canary's prediction differs from stable's.",
            ["model", "version"], registry=r)
        self._worker_up = Gauge(
            "tfwarden_drift_worker_up", "1 while the drift worker process runs.", registry=r)
        self._worker_restarts = Counter(
            "tfwarden_drift_worker_restarts_total", "Drift worker failures (crash, hang).",
            registry=r)
        self._worker_rss = Gauge(
            "tfwarden_drift_worker_resident_memory_bytes", "RSS of the drift worker process.",
            registry=r)
        self._captured = Counter(
            "tfwarden_capture_rows_total",
            "Captured input rows accepted, and bodies rejected (by HTTP status).",
            ["model", "outcome", "status"], registry=r)
        self._edge_points = Counter(
            "tfwarden_edge_points_total",
            "OTLP data points (signal metrics) and log records (signal logs) from edge devices, "
            "kept or rejected.", ["signal", "outcome"], registry=r)
        self._edge_refused = Counter(
            "tfwarden_edge_requests_refused_total",
            "OTLP requests from edge devices refused whole (by HTTP status).",
            ["signal", "status"], registry=r)

    def started(self, t: float) -> None:
        self._start_time.set(t)

    def set_ready(self, ready: bool) -> None:
        self._ready.set(1 if ready else 0)

    def config_loaded(self, ok: bool, t: float, generation: int) -> None:
        self._reload_ok.set(1 if ok else 0)
        self._reloads.labels(outcome="success" if ok else "failure").inc()
        if ok:
            self._reload_time.set(t)
            self._generation.set(generation)

    def job_ran(self, job: str, outcome: str, duration_seconds: float, t: float) -> None:
        self._job_runs.labels(job=job, outcome=outcome).inc()
        self._job_duration.labels(job=job).observe(duration_seconds)
        if outcome == "success":
            self._job_last_success.labels(job=job).set(t)

    def loop_lag(self, seconds: float) -> None:
        self._loop_lag.observe(seconds)

    def leases(self, held: dict[str, bool], failed: bool) -> None:
        """Per unit of the configuration: whether this replica may act on it now."""
        for unit in self._lease_units - set(held):
            self._lease_held.remove(unit)
        for unit, mine in held.items():
            self._lease_held.labels(unit).set(1 if mine else 0)
        self._lease_units = set(held)
        if failed:
            self._lease_failures.inc()

    def journal_pruned(self, entries: int) -> None:
        self._journal_pruned.inc(entries)

    def watchdog_pinged(self) -> None:
        self._watchdog_pings.inc()

    def journaled(self, kind: str) -> None:
        self._journal_events.labels(kind=kind).inc()

    def unauthorized(self, path: str) -> None:
        self._http_denied.labels(path=path).inc()

    def probe_request(self, model: str, version: str, target: str, outcome: str,
                      latency_seconds: float) -> None:
        self._probe_requests.labels(model, version, target, outcome).inc()
        self._probe_latency.labels(model, version, target).observe(latency_seconds)

    def probe_skipped(self, model: str, version: str, target: str, count: int) -> None:
        self._probe_skipped.labels(model, version, target).inc(count)

    def probe_late(self, seconds: float) -> None:
        self._probe_lateness.observe(seconds)

    def probe_ran(self, probe: str, ok: bool) -> None:
        self._probe_runs.labels(probe, "success" if ok else "failure").inc()

    def version_state(self, serving: str, model: str, version: int, state: float) -> None:
        self._version_state.labels(serving, model, str(version)).set(state)

    def memory(self, target: str, kind: str, value: float) -> None:
        self._memory.labels(target, kind).set(value)

    def finding(self, finding: Any, series: Hashable | None = None) -> None:
        """Export one Finding (core.types.Finding) of the detector ``series`` names (see
        core.ports.FindingMetrics)."""
        version = "" if finding.version is None else str(finding.version)
        model = finding.model or ""
        evidence = finding.evidence
        statistic = evidence.get("statistic")
        statistic = statistic if isinstance(statistic, str) else None
        self._forget_changed_labels(finding.detector, model, finding.target, version, statistic,
                                    series)
        for verdict in ("ok", "regression", "inconclusive"):
            self._finding.labels(finding.detector, model, version, finding.target, verdict).set(
                1 if finding.verdict == verdict else 0)
        if statistic is not None:
            labels = (finding.detector, model, version, finding.target, statistic)
            for gauge, key in ((self._finding_value, "value"),
                               (self._finding_threshold, "threshold")):
                value = evidence.get(key)
                gauge.labels(*labels).set(value if _number(value) else math.nan)
        samples = evidence.get("samples")
        if _number(samples):
            self._finding_samples.labels(finding.detector, model, version,
                                         finding.target).set(samples)
        ratio = finding.effect.get("median_ratio")
        if finding.detector == "latency" and ratio is not None:
            self._median_ratio.labels(model, version, finding.target).set(ratio)
        if finding.detector == "memory":
            slope = finding.effect.get("slope_mib_per_hour")
            if slope is not None:
                self._leak_slope.labels(finding.target).set(slope * 1024 * 1024)
            ttl = finding.effect.get("time_to_limit_seconds")
            if ttl is not None:
                self._time_to_limit.labels(finding.target).set(ttl)

    def forget_finding(self, detector: str, model: str, target: str,
                       series: Hashable | None = None) -> None:
        """A detector that no longer exists (a comparison dropped when the roles changed): its
        series go, instead of reporting its last verdict forever."""
        previous = self._exported.pop(_exported_key(detector, model, target, series), None)
        if previous is None:
            return
        version, statistic = previous
        removals: list[tuple[Any, tuple[str, ...]]] = [
            *((self._finding, (detector, model, version, target, verdict))
              for verdict in ("ok", "regression", "inconclusive")),
            (self._finding_samples, (detector, model, version, target))]
        if statistic is not None:
            removals += [(gauge, (detector, model, version, target, statistic))
                         for gauge in (self._finding_value, self._finding_threshold)]
        if detector == "latency":
            removals.append((self._median_ratio, (model, version, target)))
        for gauge, labels in removals:
            with contextlib.suppress(KeyError):
                gauge.remove(*labels)

    def _forget_changed_labels(self, detector: str, model: str, target: str, version: str,
                               statistic: str | None, series: Hashable | None) -> None:
        """A finding whose version or statistic label changed (a drift finding names the rows'
        version while drifted, none after; a latency finding leads with its median or its tail
        test) drops its old series, which would otherwise report their last values forever."""
        key = _exported_key(detector, model, target, series)
        previous = self._exported.get(key)
        self._exported[key] = (version, statistic)
        if previous is None or previous == (version, statistic):
            return
        old_version, old_statistic = previous
        with contextlib.suppress(KeyError):
            if old_version != version:
                for verdict in ("ok", "regression", "inconclusive"):
                    self._finding.remove(detector, model, old_version, target, verdict)
                self._finding_samples.remove(detector, model, old_version, target)
            if old_statistic is not None:
                for gauge in (self._finding_value, self._finding_threshold):
                    gauge.remove(detector, model, old_version, target, old_statistic)

    def decision(self, model: str, action: str, dry_run: bool) -> None:
        self._decisions.labels(model, action, str(dry_run).lower()).inc()

    def action(self, model: str, action: str, outcome: str) -> None:
        self._actions.labels(model, action, outcome).inc()

    def model_phase(self, model: str, phase: str, weight: int) -> None:
        for name in ("stable", "canary_shadow", "canary_live", "promoting", "rolling_back",
                     "rolled_back", "paused"):
            self._phase.labels(model, name).set(1 if name == phase else 0)
        self._weight.labels(model).set(weight)

    def edge_rollout(self, model: str, phase: str, percent: int, pinned: int) -> None:
        for name in ("idle", "rolling_out", "halted", "rolled_back"):
            self._edge_phase.labels(model, name).set(1 if name == phase else 0)
        self._edge_percent.labels(model).set(percent)
        self._edge_pinned.labels(model).set(pinned)

    def edge_action(self, model: str, action: str, outcome: str) -> None:
        self._edge_actions.labels(model, action, outcome).inc()

    def notified(self, notifier: str, ok: bool) -> None:
        self._notifications.labels(notifier, "success" if ok else "failure").inc()

    def captured(self, model: str, outcome: str, status: int, rows: int) -> None:
        self._captured.labels(model, outcome, str(status)).inc(rows)

    def edge_ingested(self, signal: str, accepted: int, rejected: int) -> None:
        self._edge_points.labels(signal, "accepted").inc(accepted)
        self._edge_points.labels(signal, "rejected").inc(rejected)

    def edge_request_refused(self, signal: str, status: int) -> None:
        self._edge_refused.labels(signal, str(status)).inc()

    def drift_report(self, model: str, report: dict[str, Any], drifted: bool) -> None:
        for feature in report["features"]:
            if report.get("engine") == "sequential":
                self._drift_log_e.labels(model, feature["name"]).set(feature["statistic"])
                continue
            p = feature["p_adjusted"]
            self._drift_p.labels(model, feature["name"]).set(float("nan") if p is None else p)
        if report.get("engine") == "sequential":
            self._drift_log_threshold.labels(model).set(report["log_threshold"])
        self._drift_detected.labels(model).set(1 if drifted else 0)
        self._drift_checks.labels(model, "drift" if report["drift"] else "no_drift").inc()

    def drift_disagreement(self, model: str, version: int, ratio: float) -> None:
        self._disagreement.labels(model, str(version)).set(ratio)

    def drift_worker(self, up: bool, restarted: bool = False, rss_bytes: int | None = None) -> None:
        self._worker_up.set(1 if up else 0)
        if restarted:
            self._worker_restarts.inc()
        if rss_bytes is not None:
            self._worker_rss.set(rss_bytes)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def _exported_key(detector: str, model: str, target: str, series: Hashable | None) -> Hashable:
    # Keyed by detector, model and target alone, the burn-rate detectors of one model's versions
    # (all target "slo") took each other's place: every evaluation removed the other versions'
    # series, and a scrape saw the burn finding of one version per model.
    return (detector, model, target) if series is None else ("series", series)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
