"""Configuration -> objects: the one place that builds the pipeline, read top to bottom.

    serving clients (one gRPC channel per address, one HTTP client)
    probes --Sample--> series windows + detector roster <--roles-- role tracker
    capture endpoints --rows--> drift checks (drift worker) --Finding--> roster
    roster --Finding--> policy --Decision--> lifecycle runner --Action--> server, router
                                             \\--> alerts (notifiers), reoptimize (optimizers)
    runner --status--> role tracker

``build`` makes the objects of the first configuration, ``start`` sets them running,
``reconfigure`` hands each long-lived object its new settings (detector evidence, policy memory,
approvals and the alert book survive a reload), ``stop`` ends them.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import httpx

from tfwarden.core.clock import Clock
from tfwarden.core.ports import (
    EdgeIngestMetrics,
    Fence,
    KeyValueStore,
    SampleSink,
    Scheduler,
    StateStore,
)
from tfwarden.core.series import SeriesWindows
from tfwarden.daemon.config import Config, read_ingest_tokens
from tfwarden.daemon.leases import edge_unit, serving_unit
from tfwarden.daemon.recorder import Recorder
from tfwarden.daemon.state import EventJournal
from tfwarden.daemon.statuspage import HISTORY_SECONDS
from tfwarden.detectors.alerts import ReceiveRule
from tfwarden.detectors.backtest import Backtest
from tfwarden.detectors.drift.checks import DriftChecks, DriftedModel
from tfwarden.detectors.drift.client import DriftWorkerClient
from tfwarden.detectors.drift.settings import DriftSettings
from tfwarden.detectors.edge import EdgeVerdicts, EdgeVerdictSettings
from tfwarden.detectors.roles import RoleTracker, VersionEvents
from tfwarden.detectors.roster import ModelObjectives, Roster
from tfwarden.lifecycle.alerts import AlertBook
from tfwarden.lifecycle.edgerunner import EdgeModel, EdgeRolloutRunner
from tfwarden.lifecycle.notifiers.alertmanager import AlertmanagerNotifier, WebhookNotifier
from tfwarden.lifecycle.notifiers.base import Notifier
from tfwarden.lifecycle.notifiers.dispatch import Dispatcher
from tfwarden.lifecycle.reoptimize import Reoptimizer
from tfwarden.lifecycle.replay import PolicyReplay
from tfwarden.lifecycle.routers.base import LabelsRouter, Router, ShadowRouter
from tfwarden.lifecycle.routers.nginx import NginxRouter
from tfwarden.lifecycle.runner import POLICY_SECONDS, LifecycleRunner, ManagedModel
from tfwarden.lifecycle.watcher import VersionWatcher
from tfwarden.optimizers.settings import OptimizeSettings
from tfwarden.policies.engine import PolicyEngine
from tfwarden.policies.rules import load_ruleset
from tfwarden.probes.capture import CapturedModel, CaptureService
from tfwarden.probes.predict import PredictHttp
from tfwarden.probes.settings import MemoryTargetSettings
from tfwarden.probes.supervisor import Endpoint, ProbedModel, ProbeSettings, ProbeSupervisor
from tfwarden.serving.tfserving.client import Channels, TFServingClient
from tfwarden.serving.tfserving.controller import TFServingController
from tfwarden.serving.tfserving.settings import EndpointSettings

if TYPE_CHECKING:  # imported when an edge model is configured
    from tfwarden.probes.edge.receiver import EdgeReceiver

log = logging.getLogger("tfwarden.daemon")
EVALUATE_SECONDS = 2.0
EVALUATE_SLICE = 200  # detectors evaluated between two turns of the event loop
UNLOAD_PREVIOUS_SECONDS = 30.0
MAX_PROBE_CONNECTIONS = 200
DEVICE_KEY = "edge/device_key"


@dataclass
class Process:
    """What lives as long as the process: clock, metrics, state, scheduler, connections."""

    clock: Clock
    recorder: Recorder
    store: StateStore
    jobs: Scheduler
    http: httpx.AsyncClient = field(default_factory=httpx.AsyncClient)  # alerts, drift predicts
    probe_http: httpx.AsyncClient = field(default_factory=lambda: httpx.AsyncClient(
        limits=httpx.Limits(max_connections=MAX_PROBE_CONNECTIONS)))  # scrapes wait, not alerts
    predict_http: PredictHttp = field(  # the REST predict probes (the hot path: aiohttp)
        default_factory=lambda: PredictHttp(MAX_PROBE_CONNECTIONS))
    channels: Channels = field(default_factory=Channels)
    fence: Fence | None = None  # replicas: the leases (daemon.leases); None: one daemon owns all

    def __post_init__(self) -> None:
        self.journal = EventJournal(self.store, self.clock, self.recorder)

    async def close(self) -> None:
        await self.http.aclose()
        await self.probe_http.aclose()
        await self.predict_http.close()
        await self.channels.close()


@dataclass(frozen=True)
class ServingEndpoint:
    """A configured serving endpoint and its client (kept across reloads while unchanged)."""

    settings: EndpointSettings
    client: TFServingClient


@dataclass
class Pipeline:
    """The running stages of one daemon."""

    endpoints: dict[str, ServingEndpoint]
    windows: SeriesWindows
    roles: RoleTracker
    roster: Roster
    capture: CaptureService
    drift_worker: DriftWorkerClient
    drift: DriftChecks
    probes: ProbeSupervisor
    policy: PolicyEngine
    dispatcher: Dispatcher
    alerts: AlertBook
    reoptimizer: Reoptimizer
    runner: LifecycleRunner
    watcher: VersionWatcher
    alert_rules: list[ReceiveRule]
    edge: EdgeReceiver | None  # only with edge.models (it loads the OTLP protobuf modules)
    edge_verdicts: EdgeVerdicts
    edge_rollouts: EdgeRolloutRunner
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)


def windows_of(config: Config) -> SeriesWindows:
    """Raw samples as long as something reads them back: the status page's hour, or the
    baseline a new stable version is compared with when that is longer (not 6 h: at 1,000
    probed versions every hour of samples costs about 95 MB)."""
    baseline = config.detection.latency.baseline_seconds
    return SeriesWindows(max_age_seconds=max(HISTORY_SECONDS, baseline))


def build(config: Config, process: Process) -> Pipeline:
    """Every object of ``config`` (nothing runs yet); raises ConfigError for bad golden files."""
    p, endpoints = process, endpoints_of(config, process, {})
    windows, roles = windows_of(config), RoleTracker()
    roster = Roster(config.detection, objectives_of(config), memory_targets_of(config), windows,
                    p.clock, p.journal, p.recorder)
    roles.subscribe(roster)
    capture = CaptureService(config.capture, captured_models(config, endpoints), p.recorder)
    drift_worker = DriftWorkerClient(config.state_dir, config.detection.drift_worker, p.recorder)
    drift = DriftChecks(drifted_models(config, endpoints), config.state_dir, drift_worker, capture,
                        roles, roster, p.recorder, p.clock)
    probes = ProbeSupervisor(probe_settings(config, endpoints), p.jobs, p.probe_http, windows,
                             roster, VersionEvents(roster, roles, p.clock.now), p.recorder,
                             p.clock, predict_http=p.predict_http)
    policy = PolicyEngine(load_ruleset(config.policies.ruleset), config.policies.dry_run)
    dispatcher = Dispatcher(notifiers_of(config, p.http), on_result=p.recorder.notified)
    alerts = AlertBook(dispatcher, p.journal, p.clock, config.alerting.labels, page_url(config))
    reoptimizer = Reoptimizer(optimize_settings(config), config.state_dir / "optimize", p.journal,
                              alerts, p.store, captured=capture, calibration=drift)
    runner = LifecycleRunner(managed_models(config, endpoints, p.fence), store=p.store,
                             journal=p.journal, clock=p.clock, metrics=p.recorder, policy=policy,
                             findings=roster, alerts=alerts, listener=roles,
                             reoptimizer=reoptimizer, fence=p.fence)
    verdicts = EdgeVerdicts(edge_verdict_settings(config))
    rollouts = EdgeRolloutRunner(edge_models(config), store=p.store, journal=p.journal,
                                 clock=p.clock, metrics=p.recorder, verdicts=verdicts,
                                 alerts=alerts, listener=verdicts, fence=p.fence)
    return Pipeline(endpoints, windows, roles, roster, capture, drift_worker, drift,
                    probes, policy, dispatcher, alerts, reoptimizer, runner, VersionWatcher(runner),
                    list(config.alerting.receive),
                    edge_receiver(config, p.store, None, verdicts, p.recorder),
                    verdicts, rollouts)


# -- configuration -> each stage's settings -----------------------------------------------------
def endpoints_of(config: Config, process: Process,
                 current: dict[str, ServingEndpoint]) -> dict[str, ServingEndpoint]:
    """A client per serving endpoint; one whose settings did not change is kept (its cached
    signatures with it)."""
    endpoints = {}
    for name, settings in config.serving.items():
        old = current.get(name)
        if old is not None and old.settings == settings:
            old.client.signature_ttl_seconds = config.capture.signature_ttl_seconds
            old.client.forget_signatures()  # a reload reads the signatures again
            endpoints[name] = old
            continue
        endpoints[name] = ServingEndpoint(
            settings, TFServingClient(
                name, grpc_address=settings.grpc_address,
                rest_url=str(settings.rest_url) if settings.rest_url else None,
                channels=process.channels, http=process.http,
                timeout_seconds=settings.timeout_seconds,
                signature_ttl_seconds=config.capture.signature_ttl_seconds))
    return endpoints


def objectives_of(config: Config) -> dict[str, ModelObjectives]:
    return {m.name: m.slo for m in config.models}


def memory_targets_of(config: Config) -> dict[str, MemoryTargetSettings]:
    return {t.name: t for t in config.memory}


def probe_settings(config: Config, endpoints: dict[str, ServingEndpoint]) -> ProbeSettings:
    return ProbeSettings({name: Endpoint(e.settings, e.client) for name, e in endpoints.items()},
                         [ProbedModel(m.name, m.serving, m.probe, m.golden_requests)
                          for m in config.models], config.memory, config.promql)


def edge_verdict_settings(config: Config) -> dict[str, tuple[int, EdgeVerdictSettings]]:
    return {m.name: (m.max_cohorts, m.verdicts) for m in config.edge.models
            if m.rollout is not None}


def edge_models(config: Config) -> dict[str, EdgeModel]:
    """Edge models with staged rollouts."""
    return {m.name: EdgeModel(m.name, m.rollout, m.base_path, m.download_url, edge_unit(m.name))
            for m in config.edge.models if m.rollout is not None and m.base_path is not None}


def edge_receiver(config: Config, store: KeyValueStore, current: EdgeReceiver | None,
                  sink: SampleSink, metrics: EdgeIngestMetrics) -> EdgeReceiver | None:
    """The OTLP receiver while any edge model is configured (kept, with its data, across
    reloads); None otherwise. Device reports go to ``sink`` (the cohort verdicts)."""
    if not config.edge.models:
        return None
    if current is not None:
        current.reconfigure(config.edge)
        return current
    from tfwarden.probes.edge import receiver

    return receiver.EdgeReceiver(config.edge, device_key(store), sink, metrics)


def device_key(store: KeyValueStore) -> bytes:
    """The key edge device ids are hashed with: made once, kept in the state store, so hashes
    (and the sticky buckets built on them) stay the same across restarts."""
    stored = store.get(DEVICE_KEY)
    if stored is None:  # replicas starting together on a new database: the first one's key
        stored = store.put_new(DEVICE_KEY, secrets.token_hex(32), time.time())
    return bytes.fromhex(stored)


def captured_models(config: Config, endpoints: dict[str, ServingEndpoint]) -> dict[str, CapturedModel]:
    return {m.name: CapturedModel(endpoints[m.serving].client if m.serving in endpoints else None,
                                  drift=m.drift is not None) for m in config.models}


def drifted_models(config: Config, endpoints: dict[str, ServingEndpoint]) -> dict[str, DriftedModel]:
    return {m.name: DriftedModel(m.name, m.drift, endpoints[m.serving].client)
            for m in config.models if m.drift is not None}


def managed_models(config: Config, endpoints: dict[str, ServingEndpoint],
                   fence: Fence | None = None) -> dict[str, ManagedModel]:
    """Models with ``lifecycle.enabled`` on an endpoint with a model config file and gRPC;
    with replicas, each config write first checks the endpoint's lease."""
    managed = {}
    for model in config.models:
        endpoint = endpoints[model.serving]
        settings = endpoint.settings
        if not (model.lifecycle.enabled and settings.model_config_file and settings.grpc_address):
            continue
        unit = serving_unit(model.serving)
        server = TFServingController(endpoint.client, settings.model_config_file,
                                     delivery=settings.config_delivery,
                                     guard=partial(fence.check, unit) if fence else None)
        managed[model.name] = ManagedModel(model.name, model.lifecycle, server,
                                           router_of(config, model.lifecycle.router, settings),
                                           unit)
    return managed


def router_of(config: Config, kind: str, endpoint: EndpointSettings) -> Router:
    if kind == "nginx":
        nginx = config.nginx
        assert nginx is not None and endpoint.rest_url is not None
        tokens = read_ingest_tokens(config)
        return NginxRouter(include_dir=nginx.include_dir, conf=nginx.conf, prefix=nginx.prefix,
                           upstream=str(endpoint.rest_url), binary=nginx.binary,
                           mirror_url=str(nginx.mirror_url) if nginx.mirror_url else None,
                           mirror_percent=nginx.mirror_percent,
                           mirror_token=tokens[0] if tokens else None)
    return ShadowRouter() if kind == "shadow" else LabelsRouter()


def notifiers_of(config: Config, http: httpx.AsyncClient) -> list[Notifier]:
    alerting = config.alerting
    notifiers: list[Notifier] = []
    if alerting.alertmanager is not None:
        notifiers.append(AlertmanagerNotifier(str(alerting.alertmanager.url), http,
                                              alerting.alertmanager.timeout_seconds))
    notifiers += [WebhookNotifier(str(hook.url), http, hook.timeout_seconds)
                  for hook in alerting.webhooks]
    return notifiers


def page_url(config: Config) -> str:
    """Where people reach the status page and the runbooks: ``alerting.page_url``, else the
    daemon's own address (a wildcard one named as loopback: nobody browses to 0.0.0.0)."""
    if config.alerting.page_url is not None:
        return str(config.alerting.page_url)
    host, port = config.server.host, config.server.port
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    host = f"[{host}]" if ":" in host else host
    return f"{'https' if config.server.tls else 'http'}://{host}:{port}"


def optimize_settings(config: Config) -> dict[str, OptimizeSettings]:
    return {m.name: m.optimize for m in config.models if m.optimize is not None}


# -- running ------------------------------------------------------------------------------------
async def start(p: Pipeline, jobs: Scheduler, clock: Clock) -> None:
    p.dispatcher.start()
    jobs.add("detect", _evaluate(p, clock), EVALUATE_SECONDS)
    _schedule_drift(p, jobs)
    p.probes.start()
    _spawn(p, _start_lifecycle(p, jobs))


async def _start_lifecycle(p: Pipeline, jobs: Scheduler) -> None:
    """Resume (and finish interrupted actions) before the policy loop may act."""
    await p.runner.start()
    jobs.add("policy", p.runner.tick, POLICY_SECONDS)
    _schedule_watcher(p, jobs)
    await p.edge_rollouts.start()
    jobs.add("edge-rollouts", p.edge_rollouts.tick, POLICY_SECONDS)


def _schedule_watcher(p: Pipeline, jobs: Scheduler) -> None:
    jobs.add("new-versions", p.watcher.new_versions, p.watcher.interval)
    keep = [m.settings.keep_previous_seconds for m in p.runner.models.values()]
    jobs.add("unload-previous", p.watcher.unload_previous,  # on time for short keep times too
             max(1.0, min([UNLOAD_PREVIOUS_SECONDS, *keep])))


async def _restart_lifecycle(p: Pipeline, names: list[str]) -> None:
    """After a reload: adopt or resume the models that need it; rewrite the nginx routing of
    the others (its settings may have changed)."""
    await p.runner.start(names)
    for name in p.runner.models:
        if name not in names and not p.runner.busy(name):
            await p.runner.apply_routing(name)


def _evaluate(p: Pipeline, clock: Clock) -> Callable[[], Awaitable[None]]:
    async def evaluate() -> None:
        now = clock.now()
        await p.roster.prepare(now)  # the bootstrap intervals, in a thread
        keys = list(p.roster.detectors)
        for start in range(0, len(keys), EVALUATE_SLICE):
            if start:  # let the probes run: 1,750 detectors at once held the loop 40-90 ms
                await asyncio.sleep(0)
            p.roster.evaluate(now, keys[start:start + EVALUATE_SLICE])
    return evaluate


def _schedule_drift(p: Pipeline, jobs: Scheduler) -> None:
    if p.drift.states:
        jobs.add("drift", p.drift.tick, min(5.0, p.drift.interval))
    else:
        jobs.remove("drift")


async def reconfigure(p: Pipeline, config: Config, process: Process) -> None:
    """Hand every stage its new settings; ConfigError (bad golden file, rule file) before
    anything changes."""
    endpoints = endpoints_of(config, process, p.endpoints)
    probes = probe_settings(config, endpoints)
    golden = ProbeSupervisor.read_golden(probes)
    ruleset = load_ruleset(config.policies.ruleset)
    p.endpoints = endpoints
    process.channels.keep({e.settings.grpc_address for e in endpoints.values()})
    managed = managed_models(config, endpoints, process.fence)
    for model in [m for m in p.runner.models if m not in managed]:
        p.roles.forget(model)  # the server's labels speak for it again
    p.roster.reconfigure(config.detection, objectives_of(config), memory_targets_of(config),
                         [m.name for m in config.models if m.drift is not None])
    p.capture.reconfigure(config.capture, captured_models(config, endpoints))
    dropped = p.edge_verdicts.reconfigure(edge_verdict_settings(config))
    p.edge = edge_receiver(config, process.store, p.edge, p.edge_verdicts, process.recorder)
    p.drift_worker.reconfigure(config.detection.drift_worker)
    p.drift.reconfigure(drifted_models(config, endpoints))
    _schedule_drift(p, process.jobs)
    if not p.drift.states:
        await p.drift_worker.stop()
    await p.probes.reconfigure(probes, golden)
    p.policy.reconfigure(ruleset, config.policies.dry_run)
    await p.dispatcher.reconfigure(notifiers_of(config, process.http))
    p.alerts.reconfigure(config.alerting.labels, page_url(config))
    p.reoptimizer.reconfigure(optimize_settings(config))
    p.alert_rules = list(config.alerting.receive)
    _spawn(p, _restart_lifecycle(p, p.runner.reconfigure(managed)))
    _spawn(p, p.edge_rollouts.start(p.edge_rollouts.reconfigure(edge_models(config))))
    p.edge_rollouts.evidence_lost(dropped)
    _schedule_watcher(p, process.jobs)


async def stop(p: Pipeline) -> None:
    await p.probes.stop()


async def close(p: Pipeline) -> None:
    """After the scheduler drained: end the lifecycle, alert delivery and the drift worker."""
    await p.runner.stop()
    await p.dispatcher.stop()
    await p.drift_worker.stop()
    for task in list(p.tasks):
        task.cancel()
    await asyncio.gather(*p.tasks, return_exceptions=True)


# -- tfwarden backtest ---------------------------------------------------------------------------
@dataclass
class Replay:
    """What ``tfwarden backtest`` runs a trace through: the detectors, input drift (built only
    when the trace has ``inputs`` lines: it loads numpy/scipy/alibi-detect) and the policies."""

    detection: Backtest
    policy: PolicyReplay
    drift_settings: Callable[[str], DriftSettings]


def replay(config: Config | None) -> Replay:
    """The backtest's objects for ``config`` (None: every default and the default rules)."""
    drift = {m.name: m.drift for m in config.models if m.drift is not None} if config else {}

    def drift_settings(model: str) -> DriftSettings:
        return drift.get(model) or DriftSettings()

    detection = Backtest(config.detection, {m.name: m.slo for m in config.models}) if config \
        else Backtest()
    ruleset = load_ruleset(config.policies.ruleset if config else "default")
    return Replay(detection, PolicyReplay(ruleset), drift_settings)


def _spawn(p: Pipeline, coroutine: Coroutine[Any, Any, None]) -> None:
    task = asyncio.get_running_loop().create_task(coroutine)
    p.tasks.add(task)
    task.add_done_callback(p.tasks.discard)
