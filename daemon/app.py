"""The daemon process: start, reload, stop, and what the HTTP API asks of it.

One asyncio loop runs the scheduler, the pipeline (``build``), the HTTP server and the systemd
watchdog. Start-up order: config -> state store -> TF Serving protos -> scheduler -> pipeline ->
HTTP -> READY=1. SIGHUP and ``POST /-/reload`` hand the stages a new configuration atomically
(an invalid one is refused and the old one kept); SIGTERM/SIGINT stop it within
``server.shutdown_grace_seconds`` + ~1 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import socket
import ssl
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import uvicorn

from tfwarden.core import failpoints
from tfwarden.core.clock import Clock, SystemClock
from tfwarden.core.errors import (
    ApiError,
    ConfigError,
    LeaseLost,
    LifecycleError,
    OtlpRejected,
    Refused,
    StartupError,
    StateError,
)
from tfwarden.core.events import ConfigLoaded, ConfigReloadFailed, DaemonStarting, DaemonStopped, Event
from tfwarden.core.ports import StateStore
from tfwarden.core.series import Bucket, BucketHistory
from tfwarden.daemon import build, statuspage, tracing
from tfwarden.daemon.config import (
    Config,
    load_config,
    read_bearer_token,
    read_ingest_tokens,
    tls_context,
)
from tfwarden.daemon.http import create_app
from tfwarden.daemon.jobs import JobRunner
from tfwarden.daemon.leases import (
    LeaseKeeper,
    SoleOwner,
    edge_unit,
    owned_config,
    replica_name,
    replica_url,
    serving_unit,
    units_of,
)
from tfwarden.daemon.logs import set_level
from tfwarden.daemon.recorder import Recorder
from tfwarden.daemon.sdnotify import SystemdNotifier, lag_monitor, watchdog_loop
from tfwarden.daemon.state import open_state_store
from tfwarden.detectors.alerts import receive
from tfwarden.probes.edge.settings import EdgeSettings
from tfwarden.serving.tfserving import protos

log = logging.getLogger("tfwarden.daemon")

HEAVY_MODULES = ("tensorflow.python", "alibi_detect", "tensorflow_model_optimization", "keras",
                 "tf_keras", "torch")
HEARTBEAT_SECONDS = 1.0
CHECKPOINT_SECONDS = 300.0
RETENTION_SECONDS = 3600.0
LAG_SAMPLE_SECONDS = 0.1
HTTP_STOP_SECONDS = 1.0
RESTART_ONLY_FIELDS = (("server", "listen"), ("server", "tls"), ("state_dir",), ("state",),
                       ("tracing",))


def heavy_modules_loaded() -> list[str]:
    """Heavy runtimes present in this process; must stay empty in the daemon."""
    return [name for name in HEAVY_MODULES if name in sys.modules]


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handling: the daemon owns SIGTERM/SIGINT/SIGHUP."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Daemon:
    """A running tfwarden daemon: the process around the pipeline ``build`` makes."""

    def __init__(
        self,
        config_path: str | Path,
        *,
        clock: Clock | None = None,
        recorder: Recorder | None = None,
        notifier: SystemdNotifier | None = None,
        store_factory: Callable[[Config], StateStore] = open_state_store,
        version: str = "",
    ) -> None:
        self.config_path = Path(config_path)
        self.clock = clock or SystemClock()
        self.version = version
        self.recorder = recorder or Recorder(version=version)
        self.notifier = notifier or SystemdNotifier.from_environment()
        self._store_factory = store_factory
        self.config: Config | None = None
        self.generation = 0
        self.jobs = JobRunner(self.recorder, self.clock)
        self.process: build.Process | None = None
        self.pipeline: build.Pipeline | None = None
        self._token: str | None = None
        self._tls: ssl.SSLContext | None = None
        self._ingest_tokens: tuple[str, ...] = ()
        self._ready = False
        self._stopping = False
        self._stop = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._started_at = self.clock.now()
        self._started_monotonic = time.monotonic()
        self._last_reload: dict[str, Any] = {}
        self._pending_restart: list[str] = []
        self._last_heartbeat = time.monotonic()
        self._background: set[asyncio.Task[Any]] = set()
        self._latency_history: BucketHistory | None = None  # the status page's, kept across renders
        self.leases: SoleOwner | LeaseKeeper = SoleOwner()
        self._built_for: dict[str, int] = {}  # replicas: the leases (unit -> token) the pipeline runs

    # -- DaemonControl -------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def max_body_bytes(self) -> int | None:
        return self.config.capture.max_body_bytes if self.config else None

    def bearer_token(self) -> str | None:
        return self._token

    def ingest_tokens(self) -> tuple[str, ...]:
        return self._ingest_tokens

    def findings(self) -> list[dict[str, Any]]:
        if self.pipeline is None:
            return []
        edge = [f.to_json() for f in self.pipeline.edge_verdicts.all_findings(self.clock.now())]
        return [*self.pipeline.roster.to_json(), *edge]

    def models(self) -> list[dict[str, Any]]:
        runner = self.pipeline.runner if self.pipeline else None
        return [s.to_json() for _, s in sorted(runner.statuses.items())] if runner else []

    def model(self, name: str) -> dict[str, Any] | None:
        detail = self.model_detail(name)
        if detail is None:
            return None
        return {**detail, "findings": [f for f in self.findings() if f["model"] == name]}

    def model_detail(self, name: str) -> dict[str, Any] | None:
        if self.pipeline is None or name not in self.pipeline.runner.statuses:
            self._elsewhere(name)
            return None
        return self.pipeline.runner.model_json(name)

    def _elsewhere(self, name: str) -> None:
        """ApiError 409 naming the replica that runs ``name`` when another one does."""
        model = self.config.model(name) if self.config else None
        if model is None or not isinstance(self.leases, LeaseKeeper):
            return
        unit = serving_unit(model.serving)
        owner = self.leases.owner_of(unit)
        if owner is not None:
            raise ApiError(409, f"model {name!r} is run by replica {owner['owner']!r} "
                                f"({owner['url']}), which holds the lease of {unit}: ask it there")
        if unit not in self.leases.owned([unit]):
            raise ApiError(409, f"model {name!r}: no replica holds the lease of {unit} now "
                                "(taken over within the lease TTL); try again")

    def journal(self, after_id: int, limit: int, kind: str | None,
                model: str | None, newest_first: bool = False) -> list[dict[str, Any]]:
        if self.process is None:
            return []
        return [{"id": e.id, "t": e.t, "kind": e.kind, "model": e.model, "payload": e.payload}
                for e in self.process.store.entries(after_id, limit, kind, model, newest_first)]

    async def manual_action(self, model: str, action: str) -> dict[str, Any]:
        assert self.pipeline is not None
        try:
            return await self.pipeline.runner.manual(model, action)
        except StateError as exc:  # a full disk: nothing started, or the outcome is pending
            raise ApiError(503, f"the state store cannot take the action: {exc}") from None
        except LeaseLost as exc:
            raise ApiError(409, f"this replica may not act on {model!r}: {exc}") from None

    async def capture(self, model: str, body: bytes, client: str, kind: str,
                      version: int | None) -> dict[str, Any]:
        assert self.pipeline is not None
        return await self.pipeline.capture.receive(model, body, client, kind, version)

    def drift_report(self, name: str) -> dict[str, Any] | None:
        return self.pipeline.drift.report(name) if self.pipeline is not None else None

    async def edge_ingest(self, signal: str, body: bytes, content_type: str | None,
                          content_encoding: str | None, client: str) -> tuple[bytes, str]:
        edge = self.pipeline.edge if self.pipeline else None
        if edge is None:
            raise OtlpRejected(404, "edge telemetry is not configured here (edge.models)")
        receive = edge.metrics if signal == "metrics" else edge.logs
        return await receive(body, content_type, content_encoding, client), \
            edge.media_type(content_type)

    def edge_refused(self, refusal: Refused, content_type: str | None) -> tuple[bytes, str]:
        edge = self.pipeline.edge if self.pipeline else None
        if edge is None:  # never loads the OTLP modules when no edge model is configured
            return json.dumps({"code": 5, "message": refusal.message,
                               "error": refusal.message}).encode(), "application/json"
        return edge.refusal(refusal, content_type)

    def edge_stats(self, model: str) -> dict[str, Any] | None:
        edge = self.pipeline.edge if self.pipeline else None
        return edge.stats(model) if edge is not None else None

    def edge_limits(self) -> tuple[int, tuple[str, ...]]:
        settings = self.config.edge if self.config else EdgeSettings()
        return settings.max_body_bytes, tuple(settings.cors_origins)

    # -- edge rollouts ---------------------------------------------------------------------
    def edge_rollout(self, model: str) -> dict[str, Any] | None:
        """A rollout's status with its per-cohort findings; None: no rollout configured."""
        if self.pipeline is None or model not in self.pipeline.edge_rollouts.statuses:
            return None
        findings = self.pipeline.edge_verdicts.findings(model, self.clock.now())
        return {**self.pipeline.edge_rollouts.status_json(model),
                "findings": [f.to_json() for f in findings],
                "cohorts": self.pipeline.edge_verdicts.summary(model)}

    async def edge_action(self, model: str, action: str, params: dict[str, Any]) -> dict[str, Any]:
        assert self.pipeline is not None
        if not self.pipeline.edge_rollouts.may_act(model) and \
                model in self.pipeline.edge_rollouts.statuses:
            owner = self.leases.owner_of(edge_unit(model)) \
                if isinstance(self.leases, LeaseKeeper) else None
            where = f"replica {owner['owner']!r} ({owner['url']})" if owner else "no replica now"
            raise ApiError(409, f"edge model {model!r}: its rollout is run by {where}")
        try:
            return await self.pipeline.edge_rollouts.manual(model, action, params)
        except StateError as exc:
            raise ApiError(503, f"the state store cannot take the action: {exc}") from None
        except LeaseLost as exc:
            raise ApiError(409, f"this replica may not act on {model!r}: {exc}") from None

    def edge_assignment(self, model: str, device_id: str,
                        attributes: dict[str, str]) -> dict[str, Any] | None:
        """The version a device should run (None: the model has no rollout); the device id
        is hashed as its telemetry's is, the cohort named and pooled as its telemetry's."""
        edge = self.pipeline.edge if self.pipeline else None
        if edge is None or self.pipeline is None or \
                model not in self.pipeline.edge_rollouts.statuses:
            return None
        cohort = edge.cohort_of(model, attributes, remember=False)
        try:
            return self.pipeline.edge_rollouts.assignment(model, edge.hasher(device_id), cohort)
        except LifecycleError as exc:
            raise ApiError(409, str(exc)) from None

    def edge_file(self, model: str, version: int) -> Path | None:
        if self.pipeline is None or model not in self.pipeline.edge_rollouts.statuses:
            return None
        try:
            return self.pipeline.edge_rollouts.file(model, version)
        except KeyError:
            return None

    def capture_stats(self, model: str) -> dict[str, Any]:
        return self.pipeline.capture.stats(model) if self.pipeline else {}

    # -- the status page ---------------------------------------------------------------------
    def now(self) -> float:
        return self.clock.now()

    def edge_models(self) -> list[str]:
        return sorted(self.pipeline.edge_rollouts.statuses) if self.pipeline is not None else []

    def drift_worker(self) -> dict[str, Any] | None:
        if self.pipeline is None or not self.pipeline.drift.states:
            return None
        return self.pipeline.drift_worker.status()

    def timeline(self, model: str, limit: int) -> list[dict[str, Any]]:
        return self.journal(0, limit, None, model, newest_first=True)

    def latency(self, model: str, since: float, bucket_seconds: float) -> dict[int, list[Bucket]]:
        if self.pipeline is None:
            return {}
        history = self._latency_history
        if history is None or history.windows is not self.pipeline.windows \
                or history.bucket_seconds != bucket_seconds:
            history = self._latency_history = BucketHistory(
                self.pipeline.windows, "latency_ms", bucket_seconds, statuspage.QUANTILES)
        return history.buckets(model, since, self.clock.now())

    def receive_alerts(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Alertmanager webhook: configured alerts become findings for the policies."""
        assert self.pipeline is not None
        return receive(self.pipeline.alert_rules, payload["alerts"], self.pipeline.roster,
                       self.clock.now())

    def probes_debug(self) -> dict[str, Any]:
        return self.pipeline.probes.debug() if self.pipeline is not None else {}

    def status(self) -> dict[str, Any]:
        config = self.config
        return {
            "version": self.version,
            "ready": self._ready,
            "stopping": self._stopping,
            "started_at": self._started_at,
            "uptime_seconds": round(time.monotonic() - self._started_monotonic, 3),
            "config": {
                "path": str(self.config_path),
                "generation": self.generation,
                "last_reload": self._last_reload,
                "pending_restart": self._pending_restart,
            },
            "serving": sorted(config.serving) if config else [],
            "models": [self._model_owner(m.name, m.serving) for m in config.models]
            if config else [],
            "leases": self.leases.to_json(),
            "jobs": self.jobs.status(),
            "process": {"pid": os.getpid(), "heavy_modules_loaded": heavy_modules_loaded()},
        }

    def _model_owner(self, name: str, serving: str) -> dict[str, Any]:
        unit = serving_unit(serving)
        if not isinstance(self.leases, LeaseKeeper):
            return {"name": name, "serving": serving, "unit": unit}
        owner = self.leases.owner_of(unit)
        mine = unit in self.leases.owned([unit])
        return {"name": name, "serving": serving, "unit": unit,
                "owner": self.leases.replica if mine else owner["owner"] if owner else None,
                "owner_url": self.leases.url if mine else owner["url"] if owner else None}

    def owned(self, config: Config, tokens: dict[str, int] | None = None) -> Config:
        """The part of ``config`` this replica runs (all of it without replicas): the units of
        ``tokens``, by default those the pipeline was built for."""
        if not isinstance(self.leases, LeaseKeeper):
            return config
        return owned_config(config, set(self._built_for if tokens is None else tokens))

    async def _renew_leases(self) -> None:
        """Claim, renew or give up leases; hand the pipeline its new share when it changed."""
        if self.config is None or self.pipeline is None or self.process is None:
            return
        await asyncio.to_thread(self.leases.refresh, units_of(self.config))
        await self._follow_leases()

    async def _follow_leases(self) -> None:
        """Rebuild the pipeline for the leases held now. A unit lost and taken again (a new
        token) leaves first and comes back: its models resume from the store, finishing what
        was pending, as on a takeover. A rebuild that fails is tried again at the next round."""
        if self.leases.tokens() == self._built_for:
            return
        async with self._reload_lock:
            assert self.config is not None and self.pipeline is not None
            assert self.process is not None
            tokens = self.leases.tokens()
            stale = {u: t for u, t in self._built_for.items() if tokens.get(u, t) != t}
            try:
                if stale:
                    kept = {u: t for u, t in self._built_for.items() if u not in stale}
                    await build.reconfigure(self.pipeline, self.owned(self.config, kept),
                                            self.process)
                    self._built_for = kept
                await build.reconfigure(self.pipeline, self.owned(self.config, tokens),
                                        self.process)
            except ConfigError as exc:
                log.error("units not taken up (tried again in %.0fs): %s",
                          self.leases.ttl / 3 if isinstance(self.leases, LeaseKeeper) else 0, exc)
                return
            self._built_for = tokens
            log.info("units run here: %s", ", ".join(sorted(tokens)) or "none")

    def _unit_busy(self, unit: str) -> bool:
        """An action of the unit is running or pending: its lease is not given up now."""
        pipeline = self.pipeline
        if pipeline is None:
            return True
        runner, rollouts = pipeline.runner, pipeline.edge_rollouts
        return any(runner.busy(name) for name, m in runner.models.items() if m.unit == unit) \
            or any(rollouts.lock(name).locked() for name, m in rollouts.models.items()
                   if m.unit == unit)

    async def reload(self, trigger: str) -> dict[str, Any]:
        """Load the configuration file again; keep the old one if the new one is invalid."""
        async with self._reload_lock:
            old = self.config
            try:
                new = load_config(self.config_path)
                token, ingest = read_bearer_token(new), read_ingest_tokens(new)
                if self._tls is not None and new.server.tls:
                    tls_context(new, live=self._tls)
                assert self.pipeline is not None and self.process is not None
                await build.reconfigure(self.pipeline, self.owned(new), self.process)
            except ConfigError as exc:
                return self._reload_failed(trigger, exc)
            self._pending_restart = _restart_only_changes(old, new) if old else []
            for field in self._pending_restart:
                log.warning("%s changed in %s; it takes effect after a restart", field,
                            self.config_path)
            self._loaded(new, token, ingest, trigger)
            log.info("configuration reloaded (%s): generation %d", trigger, self.generation)
            self.notifier.status(self._status_line())
            return {"ok": True, "generation": self.generation}

    def _loaded(self, config: Config, token: str | None, ingest: tuple[str, ...],
                trigger: str) -> None:
        self.config, self._token, self._ingest_tokens = config, token, ingest
        self.generation += 1
        set_level(config.logging.level)
        now = self.clock.now()
        self._last_reload = {"ok": True, "t": now, "trigger": trigger, "error": None}
        self.recorder.config_loaded(True, now, self.generation)
        self._journal(ConfigLoaded(self.generation, trigger))

    def _reload_failed(self, trigger: str, exc: ConfigError) -> dict[str, Any]:
        now = self.clock.now()
        log.error("configuration reload (%s) failed, keeping generation %d: %s",
                  trigger, self.generation, exc)
        self._last_reload = {"ok": False, "t": now, "trigger": trigger, "error": str(exc)}
        self.recorder.config_loaded(False, now, self.generation)
        self._journal(ConfigReloadFailed(trigger, str(exc)))
        return {
            "ok": False,
            "generation": self.generation,
            "error": str(exc),
            "problems": [{"path": p.path, "line": p.line, "message": p.message}
                         for p in exc.problems],
        }

    # -- lifecycle -----------------------------------------------------------------------
    async def run(self) -> int:
        """Start, serve until SIGTERM/SIGINT, stop. Raises ConfigError/StateError/StartupError."""
        self.recorder.started(self._started_at)
        self._install_signal_handlers()
        config = load_config(self.config_path)
        token, ingest = read_bearer_token(config), read_ingest_tokens(config)
        self._tls = tls_context(config)
        failpoints.arm(config.state_dir)
        self.process = build.Process(self.clock, self.recorder,
                                     self._store_factory(config), self.jobs)
        await self._take_leases(config)
        tracing.setup(config.tracing, self.version)
        self._journal(DaemonStarting(os.getpid(), self.version))
        self._loaded(config, token, ingest, "start")
        protos.load()
        sock = _bind(config.server.host, config.server.port)
        self.jobs.start()
        self._add_jobs()
        self.pipeline = build.build(self.owned(config), self.process)
        await build.start(self.pipeline, self.jobs, self.clock)
        http_config = uvicorn.Config(
            create_app(self), log_config=None, access_log=False, lifespan="off",
            timeout_graceful_shutdown=int(HTTP_STOP_SECONDS), server_header=False,
        )
        http_config.load()
        http_config.ssl = self._tls  # ours, so that a reload can load a renewed certificate
        server = _EmbeddedServer(http_config)
        serve_task = asyncio.create_task(server.serve(sockets=[sock]), name="http")
        while not server.started:
            if serve_task.done():
                raise StartupError(f"HTTP server on {config.server.listen} failed to start")
            await asyncio.sleep(0.01)
        self._start_watchdog()
        settle_garbage_collector()
        self._ready = True
        self.recorder.set_ready(True)
        self.notifier.ready(self._status_line())
        log.info("ready on http://%s (config %s, generation %d, %d model(s))",
                 config.server.listen, self.config_path, self.generation, len(config.models))
        if not self._stop.is_set():
            await self._stop.wait()
        await self._shutdown(server, serve_task)
        return 0

    async def _take_leases(self, config: Config) -> None:
        """Replicas on PostgreSQL: join the lease table and claim a first share before the
        pipeline is built (one daemon alone owns every unit)."""
        assert self.process is not None
        if config.state.kind != "postgres":
            return
        from tfwarden.daemon.pgstate import PostgresLeases, PostgresStateStore

        store = self.process.store
        if not isinstance(store, PostgresStateStore):
            return
        name = replica_name(config)
        self.leases = LeaseKeeper(PostgresLeases(store), name, replica_url(config),
                                  config.state.lease_seconds, busy=self._unit_busy,
                                  metrics=self.recorder)
        self.process.fence = self.leases
        await asyncio.to_thread(self.leases.refresh, units_of(config))
        self._built_for = self.leases.tokens()
        log.info("replica %s: %d of %d unit(s) held (lease %.0fs)", name,
                 len(self.leases.owned(units_of(config))), len(units_of(config)),
                 config.state.lease_seconds)

    def request_stop(self) -> None:
        self._stop.set()

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._spawn, lambda: self.reload("SIGHUP"))

    def _on_stop_signal(self, sig: signal.Signals) -> None:
        if not self._stopping:
            log.info("received %s, shutting down", sig.name)
        self._begin_stopping()
        self._stop.set()

    def _begin_stopping(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        self._ready = False
        self.recorder.set_ready(False)
        self.notifier.stopping("Stopping: finishing in-flight jobs")

    async def _shutdown(self, server: uvicorn.Server, serve_task: asyncio.Task[Any]) -> None:
        self._begin_stopping()
        assert self.config is not None and self.pipeline is not None and self.process is not None
        await build.stop(self.pipeline)
        cancelled = await self.jobs.drain(self.config.server.shutdown_grace_seconds)
        await build.close(self.pipeline)
        await asyncio.to_thread(self.leases.leave)
        await self.process.close()
        server.should_exit = True
        try:
            await asyncio.wait_for(serve_task, HTTP_STOP_SECONDS + 1)
        except (TimeoutError, asyncio.CancelledError):
            server.force_exit = True
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self._journal(DaemonStopped(cancelled))
        tracing.shutdown()
        self.process.store.close()
        self.notifier.close()
        log.info("stopped")

    # -- jobs ------------------------------------------------------------------------------
    def _add_jobs(self) -> None:
        self.jobs.add("heartbeat", self._heartbeat, HEARTBEAT_SECONDS)
        self.jobs.add("state-checkpoint", self._checkpoint, CHECKPOINT_SECONDS, jitter=10)
        self.jobs.add("journal-retention", self._retention, RETENTION_SECONDS, jitter=60)
        if isinstance(self.leases, LeaseKeeper):
            self.jobs.add("leases", self._renew_leases, self.leases.ttl / 3)
        self._spawn(lambda: lag_monitor(LAG_SAMPLE_SECONDS, self.recorder.loop_lag))

    async def _heartbeat(self) -> None:
        self._last_heartbeat = time.monotonic()

    async def _checkpoint(self) -> None:  # SQLite and its fsyncs work in a thread, not the loop
        if self.process is not None:
            await asyncio.to_thread(self.process.store.checkpoint)

    async def _retention(self) -> None:
        if self.process is None or self.config is None:
            return
        keep = self.config.journal
        pruned = await asyncio.to_thread(self.process.store.prune, self.clock.now(),
                                         keep.max_age_days * 86400,
                                         int(keep.max_size_mb * 1024 * 1024))
        self.recorder.journal_pruned(pruned)
        if pruned:
            log.info("journal retention: %d oldest entries deleted", pruned)

    def _start_watchdog(self) -> None:
        usec = self.notifier.watchdog_usec
        if not usec:
            return
        interval = usec / 2e6
        self._spawn(lambda: watchdog_loop(
            self.notifier, interval, max_lag_seconds=interval / 2,
            is_progressing=self._scheduler_progressing,
            on_ping=self.recorder.watchdog_pinged,
        ))
        log.info("systemd watchdog: pinging every %.2fs", interval)

    def _scheduler_progressing(self) -> bool:
        """The scheduler's heartbeat job ran recently (the scheduler itself is not stuck)."""
        return time.monotonic() - self._last_heartbeat < max(5.0, 5 * HEARTBEAT_SECONDS)

    # -- helpers ---------------------------------------------------------------------------
    def _spawn(self, factory: Callable[[], Any]) -> None:
        task = asyncio.get_running_loop().create_task(factory())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _journal(self, event: Event) -> None:
        if self.process is not None:
            self.process.journal.record(event)

    def _status_line(self) -> str:
        n_models = len(self.config.models) if self.config else 0
        return f"Watching {n_models} model(s); config generation {self.generation}"


def _restart_only_changes(old: Config, new: Config) -> list[str]:
    changed = []
    for path in RESTART_ONLY_FIELDS:
        a: Any = old
        b: Any = new
        for part in path:
            a, b = getattr(a, part), getattr(b, part)
        if a != b:
            changed.append(".".join(path))
    return changed


GC_THRESHOLD = (50_000, 20, 20)


def settle_garbage_collector() -> None:
    """Keep full collections short and rare. Everything made while starting (modules, the
    configuration, the pipeline: about 100k objects) moves to the permanent generation, which
    collections skip; and a young generation of 50,000 allocations instead of 700 promotes far
    fewer short-lived probe objects into the old ones. Before, at 1,000 probed versions, a full
    collection every few seconds stalled the event loop (and every probe) for 120-180 ms."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on accepted sockets whose proto
    # says TCP; without it every answer on a kept-alive connection waits ~40 ms (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock.listen(128)
    sock.set_inheritable(False)
    return sock
