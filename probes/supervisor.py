"""Runs the probes and routes what they see into windows, sinks, metrics and /debug/probes.

Status, metrics, PromQL and memory probes are scheduler jobs. Predict probes are open-loop
asyncio tasks, one per target: each AVAILABLE version (``address: versions``, following the
status probe), each listed label, or the unlabeled endpoint. ``reconfigure`` stops every probe
and starts those of the new settings (golden files are read first, so a bad one keeps the old
probes running).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import statistics
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx

from tfwarden.core.clock import Clock
from tfwarden.core.ports import ProbeMetrics, SampleSink, Scheduler, VersionStatusSink
from tfwarden.core.series import SeriesWindows
from tfwarden.core.types import STATE_NUMBERS, ProbeResult, Sample, VersionState
from tfwarden.probes.base import Probe
from tfwarden.probes.golden import DEFAULT_GOLDEN, GoldenRequest, load_golden
from tfwarden.probes.grpc_predict import GrpcPredictProbe
from tfwarden.probes.memory import CgroupMemoryProbe, ProcessMemoryProbe
from tfwarden.probes.predict import JsonPoster, RestPredictProbe, open_loop
from tfwarden.probes.promql import PromQLProbe
from tfwarden.probes.serving_metrics import ServingMetricsProbe
from tfwarden.probes.settings import MemoryTargetSettings, PredictProbeSettings, PromQLSettings
from tfwarden.probes.status import StatusProbe
from tfwarden.serving.tfserving.client import ServingClient
from tfwarden.serving.tfserving.settings import EndpointSettings

log = logging.getLogger("tfwarden.probes")
RECENT_RESULTS = 50
SUMMARY_SECONDS = 60.0

TargetKey = tuple[str, int | None, str]  # model, version, label


@dataclass(frozen=True)
class Endpoint:
    """A serving endpoint the probes watch: its settings and its client."""

    settings: EndpointSettings
    client: ServingClient


@dataclass(frozen=True)
class ProbedModel:
    """A model on an endpoint, with its predict probe (None: status probe only)."""

    name: str
    serving: str
    probe: PredictProbeSettings | None = None
    golden_requests: Path | None = None


@dataclass(frozen=True)
class ProbeSettings:
    """Everything the supervisor probes in one configuration generation."""

    endpoints: Mapping[str, Endpoint]
    models: Sequence[ProbedModel] = ()
    memory: Sequence[MemoryTargetSettings] = ()
    promql: PromQLSettings | None = None


class ProbeSupervisor:
    """Owns every probe; routes samples to the windows and ``samples``, version states to
    ``versions``."""

    def __init__(self, settings: ProbeSettings, jobs: Scheduler, http: httpx.AsyncClient,
                 windows: SeriesWindows, samples: SampleSink, versions: VersionStatusSink,
                 metrics: ProbeMetrics, clock: Clock, *, predict_http: JsonPoster) -> None:
        """``http`` serves the scrapes and PromQL queries, ``predict_http`` the REST predict
        probes (the hot path)."""
        self.settings, self.jobs, self.http, self.windows = settings, jobs, http, windows
        self.predict_http = predict_http
        self.samples, self.version_sink, self.metrics, self.clock = samples, versions, metrics, clock
        self._golden = self.read_golden(settings)  # ConfigError now, not when probes start
        self._loops: dict[TargetKey, asyncio.Task[None]] = {}
        self._probes: dict[TargetKey, RestPredictProbe | GrpcPredictProbe] = {}
        self._recent: dict[str, deque[dict[str, Any]]] = {}
        self._failures: dict[str, deque[dict[str, Any]]] = {}
        self.versions: dict[str, dict[str, Any]] = {}  # model -> last status detail
        self._job_names: list[str] = []
        self._by_name = {m.name: m for m in settings.models}
        self._followed: dict[str, set[int]] = {}  # model -> versions with a loop (address: versions)

    # -- start / stop ----------------------------------------------------------------------
    @staticmethod
    def read_golden(settings: ProbeSettings) -> dict[str, tuple[GoldenRequest, ...]]:
        """Every golden request file; raises ConfigError naming the file and line."""
        return {m.name: load_golden(m.golden_requests) if m.golden_requests else DEFAULT_GOLDEN
                for m in settings.models if m.probe is not None}

    async def reconfigure(self, settings: ProbeSettings,
                          golden: dict[str, tuple[GoldenRequest, ...]] | None = None) -> None:
        """Stop every probe and start those of ``settings`` (``golden``: the golden requests
        already read with ``read_golden``, so nothing can fail half way)."""
        golden = self.read_golden(settings) if golden is None else golden
        await self.stop()
        self.settings, self._golden = settings, golden
        self._by_name = {m.name: m for m in settings.models}
        names = {m.name for m in settings.models}
        self.versions = {m: d for m, d in self.versions.items() if m in names}
        self.start()
        for results in (self._recent, self._failures):  # forget probes that are gone
            for probe in [p for p in results if p not in self._job_names]:
                del results[probe]

    def start(self) -> None:
        for name, endpoint in self.settings.endpoints.items():
            models = [m.name for m in self.settings.models if m.serving == name]
            if endpoint.settings.grpc_address and models:
                status = StatusProbe(name, endpoint.client, models,
                                     model_config_file=endpoint.settings.model_config_file,
                                     clock=self.clock)
                self._add_job(status.name, functools.partial(self._run_status, status),
                              endpoint.settings.status_interval_seconds)
            if endpoint.settings.metrics_url is not None:
                scraper = ServingMetricsProbe(name, str(endpoint.settings.metrics_url), self.http,
                                              timeout_seconds=endpoint.settings.timeout_seconds,
                                              clock=self.clock)
                self._add_probe(scraper, endpoint.settings.metrics_interval_seconds)
        promql = self.settings.promql
        for query in promql.queries if promql is not None else []:
            assert promql is not None
            self._add_probe(PromQLProbe(query.name, str(promql.url), query.query, query.metric,
                                        self.http, target_label=query.target_label,
                                        model=query.model, timeout_seconds=promql.timeout_seconds,
                                        clock=self.clock), query.interval_seconds)
        for target in self.settings.memory:
            self._add_probe(_memory_probe(target, self.clock), target.interval_seconds)
        for model in self.settings.models:
            if model.probe is not None and model.probe.address != "versions":
                labels: list[str | None] = (list(model.probe.labels)
                                            if model.probe.address == "labels" else [None])
                for label in labels:
                    self._start_loop(model, None, label)

    def _add_probe(self, probe: Probe, interval: float) -> None:
        self._add_job(probe.name, lambda: self._run_generic(probe), interval)

    def _add_job(self, name: str, func: Callable[[], Awaitable[None]], interval: float) -> None:
        self.jobs.add(name, func, interval, run_now=True)  # first observation now, not in N s
        self._job_names.append(name)

    async def stop(self) -> None:
        for name in self._job_names:
            self.jobs.remove(name)
        self._job_names.clear()
        while self._loops:  # a status run still going may start a loop while this waits
            loops = list(self._loops.values())
            self._loops.clear()
            for task in loops:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
        self._probes.clear()
        self._followed.clear()

    # -- status and memory -----------------------------------------------------------------
    async def _run_status(self, probe: StatusProbe) -> None:
        result = await probe.run()
        self._record(result)
        for model_name, detail in result.detail.get("models", {}).items():
            if "versions" not in detail:
                continue
            self.versions[model_name] = detail
            states = [VersionState(**entry) for entry in detail["versions"]]
            for state in states:
                self.metrics.version_state(probe.endpoint, model_name, state.version,
                                           STATE_NUMBERS.get(state.state, 0))
            self._follow_versions(model_name, [s.version for s in states if s.available])
            self.version_sink.versions_seen(model_name, states, detail.get("labels"))

    async def _run_generic(self, probe: Probe) -> None:
        result = await probe.run()
        self._record(result)
        for sample in result.samples:
            if sample.source == "memory":
                self.metrics.memory(sample.target, sample.metric.removesuffix("_bytes"),
                                    sample.value)

    def _record(self, result: ProbeResult) -> None:
        self.metrics.probe_ran(result.probe, result.ok)
        for sample in result.samples:
            self.windows.add(sample)
            self.samples.observe(sample)
        entry = result.to_json()
        models = entry["detail"].get("models")
        if isinstance(models, dict):  # a status run: every model's versions are in ``versions``
            failed = {name: d for name, d in models.items() if "error" in d}
            entry["detail"] = {**entry["detail"], "models": failed}
            if len(failed) < len(models):  # 50 copies of 1,000 models' versions were ~30 MB
                entry["detail"]["models_answered"] = len(models) - len(failed)
        self._recent.setdefault(result.probe, deque(maxlen=RECENT_RESULTS)).append(entry)
        if not result.ok:
            self._failures.setdefault(result.probe, deque(maxlen=RECENT_RESULTS)).append(entry)
            log.warning("probe %s failed: %s", result.probe, result.error)

    # -- predict loops ---------------------------------------------------------------------
    def _follow_versions(self, model_name: str, available: Sequence[int]) -> None:
        # Called for every model on every status run: O(versions of the model), not O(fleet).
        model = self._by_name.get(model_name)
        if model is None or model.probe is None or model.probe.address != "versions":
            return
        followed = self._followed.setdefault(model_name, set())
        for version in followed - set(available):
            key: TargetKey = (model_name, version, "")
            followed.discard(version)
            if (task := self._loops.pop(key, None)) is not None:
                task.cancel()
            self._probes.pop(key, None)
        for version in sorted(available):
            if version not in followed:
                followed.add(version)
                self._start_loop(model, version, None)

    def _start_loop(self, model: ProbedModel, version: int | None, label: str | None) -> None:
        settings = model.probe
        assert settings is not None
        endpoint = self.settings.endpoints[model.serving]
        probe: RestPredictProbe | GrpcPredictProbe
        if settings.protocol == "grpc":
            probe = GrpcPredictProbe(endpoint.client, model.name, version=version, label=label,
                                     golden=self._golden[model.name],
                                     timeout_seconds=settings.timeout_seconds, clock=self.clock)
        else:
            assert endpoint.settings.rest_url is not None
            probe = RestPredictProbe(self.predict_http, str(endpoint.settings.rest_url), model.name,
                                     version=version, label=label, golden=self._golden[model.name],
                                     timeout_seconds=settings.timeout_seconds, clock=self.clock)
        key: TargetKey = (model.name, version, label or "")
        version_label = "" if version is None else str(version)

        async def send() -> None:
            sample = await probe.send()
            if sample.version is None and label:
                sample = replace(sample, version=self._label_version(model.name, label, sample))
            self.windows.add(sample)
            self.samples.observe(sample)
            self.metrics.probe_request(model.name, version_label, label or "",
                                       sample.labels["outcome"], sample.value / 1000)

        def skipped(count: int) -> None:
            self.metrics.probe_skipped(model.name, version_label, label or "", count)

        self._probes[key] = probe
        self._loops[key] = asyncio.get_running_loop().create_task(
            open_loop(settings.rate_per_second, settings.max_in_flight, send, skipped,
                      self.metrics.probe_late, phase=_phase(model.name)),
            name=f"predict:{probe.target}")
        log.info("predict probe started for %s at %.1f/s", probe.target, settings.rate_per_second)

    def _label_version(self, model: str, label: str, sample: Sample) -> int | None:
        """The version a label-addressed sample measured: the one the server reported serving
        (gRPC), else the label's target in the last status (REST)."""
        served = sample.labels.get("served_version")
        if served:
            return int(served)
        labels = self.versions.get(model, {}).get("labels") or {}
        version = labels.get(label)
        return int(version) if version is not None else None

    # -- reporting -------------------------------------------------------------------------
    def debug(self) -> dict[str, Any]:
        """Recent probe results (failures kept apart) and per-target latency summaries."""
        since = self.clock.now() - SUMMARY_SECONDS
        since_slack = SUMMARY_SECONDS  # answers come at most a probe timeout late
        targets = []
        for (model, version, label), probe in sorted(
                self._probes.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0, kv[0][2])):
            samples = self.windows.recent(model, version, "latency_ms", label, since, since_slack)
            targets.append(_summary(probe.target, model, version, label, samples))
        return {
            "window_seconds": SUMMARY_SECONDS,
            "predict": targets,
            "status": self.versions,
            "recent": {name: list(entries) for name, entries in self._recent.items()},
            "failures": {name: list(entries) for name, entries in self._failures.items()},
        }


def _phase(model: str) -> float:
    """Where in the interval a model's sends fall: every target of the model at the same
    instants (its versions are compared in pairs), models spread evenly by a hash of the name,
    the same across restarts (as Prometheus offsets its scrapes)."""
    return zlib.crc32(model.encode()) / 2**32


def _memory_probe(target: MemoryTargetSettings, clock: Clock) -> Probe:
    if target.cgroup is not None:
        return CgroupMemoryProbe(target.name, target.cgroup, clock=clock)
    return ProcessMemoryProbe(target.name, pid=target.pid, pid_file=target.pid_file,
                              limit_bytes=target.limit_bytes, clock=clock)


def _summary(target: str, model: str, version: int | None, label: str,
             samples: list[Sample]) -> dict[str, Any]:
    ok = sorted(s.value for s in samples if s.ok)
    outcomes: dict[str, int] = {}
    for s in samples:
        outcomes[s.labels.get("outcome", "ok")] = outcomes.get(s.labels.get("outcome", "ok"), 0) + 1
    pick = (lambda q: round(ok[min(len(ok) - 1, int(q * len(ok)))], 3)) if ok else (lambda q: None)
    return {"target": target, "model": model, "version": version, "label": label or None,
            "samples": len(samples), "outcomes": outcomes,
            "p50_ms": pick(0.5), "p99_ms": pick(0.99),
            "mean_ms": round(statistics.fmean(ok), 3) if ok else None,
            "last_t": samples[-1].t if samples else None}
