"""The daemon: composition root and process lifecycle (start, reload, stop).

One asyncio loop runs the scheduler, the HTTP server and the systemd watchdog. Start-up order:
config -> state store -> TF Serving protos -> scheduler -> HTTP -> READY=1. SIGHUP and
``POST /-/reload`` swap the configuration atomically; SIGTERM/SIGINT stop it within
``server.shutdown_grace_seconds`` + ~1 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from tfwarden.core.clock import Clock, SystemClock
from tfwarden.core.errors import ConfigError, StartupError
from tfwarden.core.series import SeriesWindows
from tfwarden.core.types import Finding
from tfwarden.daemon import tracing
from tfwarden.daemon.capture import CaptureService
from tfwarden.daemon.config import Config, load_config, read_bearer_token
from tfwarden.daemon.detection import EVALUATE_SECONDS, DetectionSupervisor
from tfwarden.daemon.drift import DriftSupervisor, DriftWorker
from tfwarden.daemon.http import create_app
from tfwarden.daemon.jobs import JobRunner
from tfwarden.daemon.lifecycle_runner import POLICY_SECONDS, LifecycleRunner
from tfwarden.daemon.logs import set_level
from tfwarden.daemon.notify import notifiers_from
from tfwarden.daemon.probing import ProbeSupervisor
from tfwarden.daemon.recorder import Recorder
from tfwarden.daemon.sdnotify import SystemdNotifier, watchdog_loop
from tfwarden.daemon.state import SQLiteStateStore, StateStore
from tfwarden.lifecycle.notifiers.dispatch import Dispatcher
from tfwarden.policies.rules import RuleSet, load_ruleset
from tfwarden.serving.tfserving import protos

log = logging.getLogger("tfwarden.daemon")

HEAVY_MODULES = ("tensorflow.python", "alibi_detect", "tensorflow_model_optimization", "keras",
                 "tf_keras", "torch")
HEARTBEAT_SECONDS = 1.0
CHECKPOINT_SECONDS = 300.0
HTTP_STOP_SECONDS = 1.0
RESTART_ONLY_FIELDS = (("server", "listen"), ("state_dir",), ("tracing",))


def heavy_modules_loaded() -> list[str]:
    """Heavy runtimes present in this process; must stay empty in the daemon."""
    return [name for name in HEAVY_MODULES if name in sys.modules]


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handling: the daemon owns SIGTERM/SIGINT/SIGHUP."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Daemon:
    """A running tfwarden daemon."""

    def __init__(
        self,
        config_path: str | Path,
        *,
        clock: Clock | None = None,
        recorder: Recorder | None = None,
        notifier: SystemdNotifier | None = None,
        store_factory: Callable[[Path], StateStore] = SQLiteStateStore,
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
        self.store: StateStore | None = None
        self.jobs = JobRunner(self.recorder, self.clock)
        self.windows = SeriesWindows()
        self.probes: ProbeSupervisor | None = None
        self.detection: DetectionSupervisor | None = None
        self.lifecycle: LifecycleRunner | None = None
        self.dispatcher: Dispatcher | None = None
        self._http = httpx.AsyncClient()
        self.capture_service: CaptureService | None = None
        self.drift_worker: DriftWorker | None = None
        self.drift: DriftSupervisor | None = None
        self._token: str | None = None
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

    # -- DaemonControl -------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def stopping(self) -> bool:
        return self._stopping

    def bearer_token(self) -> str | None:
        return self._token

    def findings(self) -> list[dict[str, Any]]:
        return self.detection.current() if self.detection is not None else []

    def models(self) -> list[dict[str, Any]]:
        runner = self.lifecycle
        return [s.to_json() for _, s in sorted(runner.statuses.items())] if runner else []

    def model(self, name: str) -> dict[str, Any] | None:
        runner = self.lifecycle
        if runner is None or name not in runner.statuses:
            return None
        findings = [f for f in self.findings() if f["model"] == name]
        return {**runner.model_json(name), "findings": findings}

    def journal(self, after_id: int, limit: int, kind: str | None,
                model: str | None) -> list[dict[str, Any]]:
        if self.store is None:
            return []
        return [{"id": e.id, "t": e.t, "kind": e.kind, "model": e.model, "payload": e.payload}
                for e in self.store.entries(after_id, limit, kind, model)]

    async def manual_action(self, model: str, action: str) -> dict[str, Any]:
        assert self.lifecycle is not None
        return await self.lifecycle.manual(model, action)

    async def capture(self, model: str, body: bytes, client: str, kind: str,
                      version: int | None) -> dict[str, Any]:
        assert self.capture_service is not None
        return await self.capture_service.receive(model, body, client, kind, version)

    def drift_report(self, name: str) -> dict[str, Any] | None:
        return self.drift.report(name) if self.drift is not None else None

    def _captured_rows(self, model: str, version: int) -> tuple[list[str], list[list[Any]]]:
        """Reservoir rows of ``version`` and of unversioned (mirrored) captures."""
        service = self.capture_service
        return service.kept_rows(model, version) if service is not None else ([], [])

    def capture_stats(self, model: str) -> dict[str, Any]:
        return self.capture_service.stats(model) if self.capture_service else {}

    def receive_alerts(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Alertmanager webhook: configured alerts become findings for the policies."""
        assert self.config is not None and self.detection is not None
        rules = {r.alertname: r for r in self.config.alerting.receive}
        accepted = ignored = 0
        now = self.clock.now()
        for alert in payload["alerts"]:
            labels = alert.get("labels", {}) if isinstance(alert, dict) else {}
            rule = rules.get(labels.get("alertname", ""))
            if rule is None:
                ignored += 1
                continue
            firing = alert.get("status") == "firing"
            finding = Finding(rule.detector, "regression" if firing else "ok", now,
                              model=labels.get(rule.model_label, ""), version=None,
                              target=f"alertmanager:{rule.alertname}",
                              severity=labels.get("severity", "") if firing else "",
                              reason=str(alert.get("annotations", {}).get("summary", ""))[:300],
                              evidence={"alertname": rule.alertname, "labels": labels})
            identity = ",".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "severity")
            self.detection.add_external(finding, now + rule.expire_seconds, identity)
            accepted += 1
        return {"accepted": accepted, "ignored": ignored}

    def probes_debug(self) -> dict[str, Any]:
        return self.probes.debug() if self.probes is not None else {}

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
            "models": [{"name": m.name, "serving": m.serving} for m in config.models] if config else [],
            "jobs": self.jobs.status(),
            "process": {"pid": os.getpid(), "heavy_modules_loaded": heavy_modules_loaded()},
        }

    async def reload(self, trigger: str) -> dict[str, Any]:
        """Load the configuration file again; keep the old one if the new one is invalid."""
        async with self._reload_lock:
            old = self.config
            try:
                new = load_config(self.config_path)
                token = read_bearer_token(new)
            except ConfigError as exc:
                return self._reload_failed(trigger, exc)
            self._pending_restart = _restart_only_changes(old, new) if old else []
            for field in self._pending_restart:
                log.warning("%s changed in %s; it takes effect after a restart", field,
                            self.config_path)
            try:
                await self._restart_probes(new)
            except ConfigError as exc:
                return self._reload_failed(trigger, exc)
            self.config, self._token = new, token
            self.generation += 1
            set_level(new.logging.level)
            now = self.clock.now()
            self._last_reload = {"ok": True, "t": now, "trigger": trigger, "error": None}
            self.recorder.config_loaded(True, now, self.generation)
            self._journal("config_loaded", {"generation": self.generation, "trigger": trigger})
            if old is not None:
                log.info("configuration reloaded (%s): generation %d", trigger, self.generation)
                self.notifier.status(self._status_line())
            return {"ok": True, "generation": self.generation}

    async def _restart_probes(self, config: Config) -> None:
        """Replace the running probes with those of ``config`` (golden files are read first,
        so a bad one keeps the old probes running)."""
        detection = DetectionSupervisor(config, self.recorder, self.clock, self.windows,
                                        self._journal_model)
        supervisor = ProbeSupervisor(config, self.jobs, self.recorder, self.clock, self.windows,
                                     on_sample=detection.observe, on_status=detection.update_roles)
        supervisor.load_golden()
        if self.probes is not None:
            await self.probes.stop()
        ruleset = load_ruleset(config.policies.ruleset)
        if self.capture_service is None:
            self.capture_service = CaptureService(config, self.recorder, self.clock)
        else:  # reservoirs survive a reload; signatures are read again
            await self.capture_service.reconfigure(config)
        self.probes, self.detection = supervisor, detection
        self.jobs.add("detect", detection.evaluate, EVALUATE_SECONDS)
        await self._restart_drift(config, detection)
        supervisor.start()
        await self._restart_lifecycle(config, ruleset, detection)

    async def _restart_drift(self, config: Config, detection: DetectionSupervisor) -> None:
        assert self.capture_service is not None
        if self.drift_worker is None:
            self.drift_worker = DriftWorker(config.state_dir, config.detection.drift_worker,
                                            self.recorder)
        self.drift_worker.settings = config.detection.drift_worker
        self.drift = DriftSupervisor(config, self.drift_worker, self.capture_service,
                                     self.recorder, self.clock, self._http,
                                     detection.role_versions, detection.publish)
        if self.drift.states:
            self.jobs.add("drift", self.drift.tick, min(5.0, self.drift.interval))
        else:
            self.jobs.remove("drift")
            await self.drift_worker.stop()

    async def _restart_lifecycle(self, config: Config, ruleset: RuleSet,
                                 detection: DetectionSupervisor) -> None:
        if self.lifecycle is not None:
            await self.lifecycle.stop()
        if self.dispatcher is not None:
            await self.dispatcher.stop()
        assert self.store is not None
        self.dispatcher = Dispatcher(notifiers_from(config, self._http),
                                     on_result=self.recorder.notified)
        self.dispatcher.start()
        runner = LifecycleRunner(config, ruleset, self.store, self.recorder, self.clock,
                                 self.dispatcher, self._journal_model, detection.all_findings,
                                 self._captured_rows)
        self.lifecycle = runner
        if not runner.models:
            return
        self._spawn(lambda: self._start_lifecycle(runner))

    async def _start_lifecycle(self, runner: LifecycleRunner) -> None:
        """Resume (and finish interrupted actions) before the policy loop may act."""
        await runner.start()
        if runner is not self.lifecycle:
            return  # replaced by a reload meanwhile
        interval = min(m.lifecycle.version_poll_seconds for m in runner.models.values())
        self.jobs.add("policy", runner.tick, POLICY_SECONDS)
        self.jobs.add("new-versions", runner.watch_versions, interval)
        self.jobs.add("unload-previous", runner.unload_previous, 30.0)

    def _reload_failed(self, trigger: str, exc: ConfigError) -> dict[str, Any]:
        now = self.clock.now()
        log.error("configuration reload (%s) failed, keeping generation %d: %s",
                  trigger, self.generation, exc)
        self._last_reload = {"ok": False, "t": now, "trigger": trigger, "error": str(exc)}
        self.recorder.config_loaded(False, now, self.generation)
        self._journal("config_reload_failed", {"trigger": trigger, "error": str(exc)})
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
        self.config = load_config(self.config_path)
        self._token = read_bearer_token(self.config)
        set_level(self.config.logging.level)
        self.generation = 1
        self.recorder.config_loaded(True, self.clock.now(), self.generation)
        self._last_reload = {"ok": True, "t": self.clock.now(), "trigger": "start", "error": None}
        self.store = self._store_factory(self.config.state_dir)
        tracing.setup(self.config.tracing, self.version)
        self._journal("daemon_starting", {"pid": os.getpid(), "version": self.version})
        self._journal("config_loaded", {"generation": self.generation, "trigger": "start"})
        protos.load()
        sock = _bind(self.config.server.host, self.config.server.port)
        self.jobs.start()
        self._add_jobs()
        await self._restart_probes(self.config)
        server = _EmbeddedServer(uvicorn.Config(
            create_app(self), log_config=None, access_log=False, lifespan="off",
            timeout_graceful_shutdown=int(HTTP_STOP_SECONDS), server_header=False,
        ))
        serve_task = asyncio.create_task(server.serve(sockets=[sock]), name="http")
        while not server.started:
            if serve_task.done():
                raise StartupError(f"HTTP server on {self.config.server.listen} failed to start")
            await asyncio.sleep(0.01)
        self._start_watchdog()
        self._ready = True
        self.recorder.set_ready(True)
        self.notifier.ready(self._status_line())
        log.info("ready on http://%s (config %s, generation %d, %d model(s))",
                 self.config.server.listen, self.config_path, self.generation,
                 len(self.config.models))
        if not self._stop.is_set():
            await self._stop.wait()
        await self._shutdown(server, serve_task)
        return 0

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
        assert self.config is not None
        if self.probes is not None:
            await self.probes.stop()
        cancelled = await self.jobs.drain(self.config.server.shutdown_grace_seconds)
        if self.lifecycle is not None:
            await self.lifecycle.stop()
        if self.dispatcher is not None:
            await self.dispatcher.stop()
        if self.drift_worker is not None:
            await self.drift_worker.stop()
        await self._http.aclose()
        if self.capture_service is not None:
            await self.capture_service.close()
        server.should_exit = True
        try:
            await asyncio.wait_for(serve_task, HTTP_STOP_SECONDS + 1)
        except (TimeoutError, asyncio.CancelledError):
            server.force_exit = True
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self._journal("daemon_stopped", {"cancelled_jobs": cancelled})
        tracing.shutdown()
        if self.store is not None:
            self.store.close()
        self.notifier.close()
        log.info("stopped")

    # -- jobs ------------------------------------------------------------------------------
    def _add_jobs(self) -> None:
        self.jobs.add("heartbeat", self._heartbeat, HEARTBEAT_SECONDS)
        self.jobs.add("state-checkpoint", self._checkpoint, CHECKPOINT_SECONDS, jitter=10)

    async def _heartbeat(self) -> None:
        self._last_heartbeat = time.monotonic()

    async def _checkpoint(self) -> None:
        if self.store is not None:
            self.store.checkpoint()

    def _start_watchdog(self) -> None:
        usec = self.notifier.watchdog_usec
        if not usec:
            return
        interval = usec / 2e6
        self._spawn(lambda: watchdog_loop(
            self.notifier, interval, max_lag_seconds=interval / 2,
            is_progressing=self._scheduler_progressing,
            on_ping=self.recorder.watchdog_pinged, on_lag=self.recorder.loop_lag,
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

    def _journal(self, kind: str, payload: dict[str, Any]) -> None:
        self._journal_model(kind, payload, None)

    def _journal_model(self, kind: str, payload: dict[str, Any], model: str | None) -> int:
        if self.store is None:
            return 0
        entry_id = self.store.append(self.clock.now(), kind, payload, model=model)
        self.recorder.journaled(kind)
        return entry_id

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


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock.listen(128)
    sock.set_inheritable(False)
    return sock
