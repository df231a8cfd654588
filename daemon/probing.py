"""Runs the configured probes and routes what they see into windows, metrics and /debug/probes.

Status and memory probes are scheduler jobs. Predict probes are open-loop asyncio tasks, one per
target: each AVAILABLE version (``address: versions``, following the status probe), each listed
label, or the unlabeled endpoint. Everything is rebuilt from the configuration on reload.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import grpc
import httpx

from tfwarden.core.clock import Clock
from tfwarden.core.series import SeriesWindows
from tfwarden.core.types import ProbeResult, Sample
from tfwarden.daemon.config import Config, ModelConfig, TFServingEndpoint
from tfwarden.daemon.jobs import JobRunner
from tfwarden.daemon.recorder import Recorder
from tfwarden.probes.golden import DEFAULT_GOLDEN, GoldenRequest, load_golden
from tfwarden.probes.grpc_predict import GrpcPredictProbe
from tfwarden.probes.memory import CgroupMemoryProbe, ProcessMemoryProbe
from tfwarden.probes.predict import RestPredictProbe, open_loop
from tfwarden.probes.promql import PromQLProbe
from tfwarden.probes.serving_metrics import ServingMetricsProbe
from tfwarden.probes.status import StatusProbe

log = logging.getLogger("tfwarden.probes")
RECENT_RESULTS = 50
SUMMARY_SECONDS = 60.0

TargetKey = tuple[str, int | None, str]  # model, version, label


class ProbeSupervisor:
    """Owns every probe of one configuration generation."""

    def __init__(self, config: Config, jobs: JobRunner, recorder: Recorder, clock: Clock,
                 windows: SeriesWindows, on_sample: Callable[[Sample], None] = lambda s: None,
                 on_status: Callable[[str, list[dict[str, Any]], dict[str, int] | None], None]
                 = lambda model, versions, labels: None) -> None:
        self.config, self.jobs, self.recorder, self.clock = config, jobs, recorder, clock
        self.windows = windows
        self._on_sample, self._on_status = on_sample, on_status
        self._client = httpx.AsyncClient(limits=httpx.Limits(max_connections=200))
        self._status_probes: list[StatusProbe] = []
        self._loops: dict[TargetKey, asyncio.Task[None]] = {}
        self._probes: dict[TargetKey, RestPredictProbe | GrpcPredictProbe] = {}
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._golden: dict[str, tuple[GoldenRequest, ...]] = {}
        self._recent: dict[str, deque[dict[str, Any]]] = {}
        self._failures: dict[str, deque[dict[str, Any]]] = {}
        self.versions: dict[str, dict[str, Any]] = {}  # model -> last status detail
        self._job_names: list[str] = []

    # -- start / stop ----------------------------------------------------------------------
    def load_golden(self) -> None:
        """Read every golden request file; raises ConfigError naming the file and line."""
        for model in self.config.models:
            if model.probe is not None:
                self._golden[model.name] = (load_golden(model.golden_requests)
                                            if model.golden_requests else DEFAULT_GOLDEN)

    def start(self) -> None:
        for name, endpoint in self.config.serving.items():
            models = [m.name for m in self.config.models if m.serving == name]
            if endpoint.grpc_address and models:
                probe = StatusProbe(name, endpoint.grpc_address, models,
                                    timeout_seconds=endpoint.timeout_seconds,
                                    model_config_file=endpoint.model_config_file, clock=self.clock)
                self._status_probes.append(probe)
                self._add_job(probe.name, lambda p=probe: self._run_status(p),
                              endpoint.status_interval_seconds)
        for name, endpoint in self.config.serving.items():
            if endpoint.metrics_url is not None:
                scraper = ServingMetricsProbe(name, str(endpoint.metrics_url), self._client,
                                              timeout_seconds=endpoint.timeout_seconds,
                                              clock=self.clock)
                self._add_job(scraper.name, lambda p=scraper: self._run_generic(p),
                              endpoint.metrics_interval_seconds)
        promql = self.config.promql
        for query in promql.queries if promql is not None else []:
            assert promql is not None
            promql_probe = PromQLProbe(query.name, str(promql.url), query.query, query.metric,
                                       self._client, target_label=query.target_label,
                                       model=query.model, timeout_seconds=promql.timeout_seconds,
                                       clock=self.clock)
            self._add_job(promql_probe.name, lambda p=promql_probe: self._run_generic(p),
                          query.interval_seconds)
        for target in self.config.memory:
            memory_probe: Any
            if target.cgroup is not None:
                memory_probe = CgroupMemoryProbe(target.name, target.cgroup, clock=self.clock)
            else:
                memory_probe = ProcessMemoryProbe(target.name, pid=target.pid,
                                                  pid_file=target.pid_file,
                                                  limit_bytes=target.limit_bytes, clock=self.clock)
            self._add_job(memory_probe.name, lambda p=memory_probe: self._run_generic(p),
                          target.interval_seconds)
        for model in self.config.models:
            if model.probe is not None and model.probe.address != "versions":
                labels: list[str | None] = (list(model.probe.labels)
                                            if model.probe.address == "labels" else [None])
                for label in labels:
                    self._start_loop(model, None, label)

    def _add_job(self, name: str, func: Any, interval: float) -> None:
        self.jobs.add(name, func, interval, run_now=True)  # first observation now, not in N s
        self._job_names.append(name)

    async def stop(self) -> None:
        for name in self._job_names:
            self.jobs.remove(name)
        for task in self._loops.values():
            task.cancel()
        await asyncio.gather(*self._loops.values(), return_exceptions=True)
        self._loops.clear()
        for probe in self._status_probes:
            await probe.close()
        for channel in self._channels.values():
            await channel.close()
        await self._client.aclose()

    # -- status and memory -----------------------------------------------------------------
    async def _run_status(self, probe: StatusProbe) -> None:
        result = await probe.run()
        self._record(result)
        for model_name, detail in result.detail.get("models", {}).items():
            if "versions" not in detail:
                continue
            self.versions[model_name] = detail
            for entry in detail["versions"]:
                self.recorder.version_state(probe.endpoint, model_name, entry["version"],
                                            _STATE_NUMBER.get(entry["state"], 0))
            self._follow_versions(model_name, detail["versions"])
            self._on_status(model_name, detail["versions"], detail.get("labels"))

    async def _run_generic(self, probe: Any) -> None:
        result = await probe.run()
        self._record(result)
        for sample in result.samples:
            if sample.source == "memory":
                self.recorder.memory(sample.target, sample.metric.removesuffix("_bytes"),
                                     sample.value)

    def _record(self, result: ProbeResult) -> None:
        self.recorder.probe_ran(result.probe, result.ok)
        for sample in result.samples:
            self.windows.add(sample)
            self._on_sample(sample)
        entry = result.to_json()
        self._recent.setdefault(result.probe, deque(maxlen=RECENT_RESULTS)).append(entry)
        if not result.ok:
            self._failures.setdefault(result.probe, deque(maxlen=RECENT_RESULTS)).append(entry)
            log.warning("probe %s failed: %s", result.probe, result.error)

    # -- predict loops ---------------------------------------------------------------------
    def _follow_versions(self, model_name: str, versions: list[dict[str, Any]]) -> None:
        model = next((m for m in self.config.models if m.name == model_name), None)
        if model is None or model.probe is None or model.probe.address != "versions":
            return
        available = {v["version"] for v in versions if v["state"] == "AVAILABLE"}
        for key in [k for k in self._loops if k[0] == model_name and k[1] not in available]:
            self._loops.pop(key).cancel()
            self._probes.pop(key, None)
        for version in sorted(available):
            if (model_name, version, "") not in self._loops:
                self._start_loop(model, version, None)

    def _start_loop(self, model: ModelConfig, version: int | None, label: str | None) -> None:
        assert model.probe is not None
        endpoint: TFServingEndpoint = self.config.serving[model.serving]
        probe: RestPredictProbe | GrpcPredictProbe
        if model.probe.protocol == "grpc":
            assert endpoint.grpc_address is not None
            channel = self._channels.get(endpoint.grpc_address)
            if channel is None:
                channel = self._channels[endpoint.grpc_address] = grpc.aio.insecure_channel(
                    endpoint.grpc_address)
            probe = GrpcPredictProbe(channel, model.name, version=version, label=label,
                                     golden=self._golden[model.name],
                                     timeout_seconds=model.probe.timeout_seconds, clock=self.clock)
        else:
            assert endpoint.rest_url is not None
            probe = RestPredictProbe(self._client, str(endpoint.rest_url), model.name,
                                     version=version, label=label, golden=self._golden[model.name],
                                     timeout_seconds=model.probe.timeout_seconds, clock=self.clock)
        key: TargetKey = (model.name, version, label or "")
        version_label = "" if version is None else str(version)

        async def send() -> None:
            sample = await probe.send()
            if sample.version is None and label:
                sample = replace(sample, version=self._label_version(model.name, label, sample))
            self.windows.add(sample)
            self._on_sample(sample)
            self.recorder.probe_request(model.name, version_label, label or "",
                                        sample.labels["outcome"], sample.value / 1000)

        def skipped(count: int) -> None:
            self.recorder.probe_skipped(model.name, version_label, label or "", count)

        self._probes[key] = probe
        self._loops[key] = asyncio.get_running_loop().create_task(
            open_loop(model.probe.rate_per_second, model.probe.max_in_flight, send, skipped),
            name=f"predict:{probe.target}")
        log.info("predict probe started for %s at %.1f/s", probe.target, model.probe.rate_per_second)

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
        targets = []
        for (model, version, label), probe in sorted(self._probes.items(),
                                                     key=lambda kv: (kv[0][0], kv[0][1] or 0, kv[0][2])):
            samples = self.windows.window(model, version, "latency_ms", label, since=since)
            targets.append(_summary(probe.target, model, version, label, samples))
        return {
            "window_seconds": SUMMARY_SECONDS,
            "predict": targets,
            "status": self.versions,
            "recent": {name: list(entries) for name, entries in self._recent.items()},
            "failures": {name: list(entries) for name, entries in self._failures.items()},
        }


_STATE_NUMBER = {"UNKNOWN": 0, "START": 10, "LOADING": 20, "AVAILABLE": 30, "UNLOADING": 40,
                 "END": 50}


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
