"""ServerCore: models, versions, labels and their life cycle, as TF Serving manages them.

- A config replaces the previous one entirely (``reload_config``); models missing from it are
  unloaded. Labels are checked against versions AVAILABLE at that moment
  (``UpdateModelVersionLabelMap``), with the ``--allow_version_labels_for_unavailable_models``
  exception for new or unchanged labels.
- Versions are numeric directories under each base path, discovered by polling; a directory
  without ``saved_model.pb`` (or ``model.tflite`` with --prefer_tflite_model) is not loaded yet.
- States START -> LOADING -> AVAILABLE -> UNLOADING -> END; END entries are kept for the life of
  the process; failed loads are retried ``--max_num_load_retries`` times, then END with the error.
- Availability preserving: a version leaving the policy is unloaded only once another aspired
  version is AVAILABLE (or nothing is aspired any more).
"""

from __future__ import annotations

import contextlib
import enum
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tfwarden.core.errors import ServingStatus
from tfwarden.serving.devserver.faults import FaultInjector
from tfwarden.serving.devserver.modelconfig import aspired_versions, validate_config
from tfwarden.serving.devserver.monitoring import ServingMetrics
from tfwarden.serving.devserver.servables import Servable, is_loadable, load_servable
from tfwarden.serving.devserver.status import not_found_latest, not_found_specific

log = logging.getLogger("tfwarden.devserver")
UNLOAD_WAIT_SECONDS = 30.0


class State(enum.IntEnum):
    """ModelVersionStatus.State numbers of get_model_status.proto."""

    UNKNOWN = 0
    START = 10
    LOADING = 20
    AVAILABLE = 30
    UNLOADING = 40
    END = 50


@dataclass
class Version:
    """One version of one model and where it is in its life."""

    number: int
    path: Path
    state: State = State.START
    error_code: str = "OK"
    error_message: str = ""
    servable: Servable | None = None
    faults: FaultInjector | None = None
    attempts: int = 0
    next_attempt: float = 0.0
    in_flight: int = 0  # requests holding this version; it is unloaded only at zero


@dataclass
class Model:
    name: str
    config: Any  # tensorflow.serving.ModelConfig
    versions: dict[int, Version] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)
    in_config: bool = True


Loader = Callable[[Path, bool], Servable]


class ServerCore:
    """Thread-safe model manager shared by the REST and gRPC front ends."""

    def __init__(self, *, metrics: ServingMetrics, prefer_tflite: bool = False,
                 allow_labels_for_unavailable: bool = False, poll_seconds: int = 1,
                 max_load_retries: int = 5, retry_interval_seconds: float = 60.0,
                 loader: Loader = load_servable) -> None:
        self.metrics = metrics
        self.prefer_tflite = prefer_tflite
        self.allow_labels_for_unavailable = allow_labels_for_unavailable
        self.poll_seconds = poll_seconds
        self.max_load_retries = max_load_retries
        self.retry_interval_seconds = retry_interval_seconds
        self._loader = loader
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._models: dict[str, Model] = {}
        self._config: Any = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reconcile_lock = threading.Lock()

    # -- configuration ---------------------------------------------------------------------
    def reload_config(self, config: Any, wait_for_new_models: float | None = None) -> None:
        """Apply a ModelServerConfig; raise ServingStatus like ServerCore::ReloadConfig.

        With ``wait_for_new_models`` (seconds), block until every newly named model has a
        version AVAILABLE (or its loads ended); new versions of existing models are not awaited.
        """
        with self._lock:
            platforms = {m.name: m.config.model_platform for m in self._models.values()
                         if m.in_config}
            validate_config(config, platforms)
            self._config = config
            self._check_labels(config)
            new_names = self._apply(config)
        self._wake.set()
        if wait_for_new_models and new_names:
            self._wait_available(new_names, wait_for_new_models)

    def _check_labels(self, config: Any) -> None:
        for entry in config.model_config_list.config:
            model = self._models.get(entry.name)
            current = model.labels if model and model.in_config else {}
            for label, number in entry.version_labels.items():
                version = model.versions.get(number) if model else None
                if version is not None and version.state == State.AVAILABLE:
                    continue
                if self.allow_labels_for_unavailable and current.get(label) in (None, number):
                    continue
                raise ServingStatus(
                    "FAILED_PRECONDITION",
                    f"Request to assign label to version {number} of model {entry.name}, "
                    "which is not currently available for inference")

    def _apply(self, config: Any) -> list[str]:
        wanted = {c.name: c for c in config.model_config_list.config}
        new_names = []
        for name, entry in wanted.items():
            model = self._models.get(name)
            if model is None or not model.in_config:
                if model is None:
                    model = self._models[name] = Model(name, entry)
                new_names.append(name)
            model.config, model.in_config = entry, True
            model.labels = dict(entry.version_labels)
        for name, model in self._models.items():
            if name not in wanted:
                model.in_config, model.labels = False, {}
        return new_names

    def _wait_available(self, names: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while time.monotonic() < deadline:
                if all(self._settled(self._models[n]) for n in names):
                    return
                self._changed.wait(timeout=min(1.0, max(0.0, deadline - time.monotonic())))

    @staticmethod
    def _settled(model: Model) -> bool:
        states = [v.state for v in model.versions.values()]
        return State.AVAILABLE in states or (
            bool(states) and all(s == State.END for s in states))

    # -- polling ---------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._poll_loop, name="fs-poll", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            for model in self._models.values():
                for version in model.versions.values():
                    if version.servable is not None:
                        version.servable.close()

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            self.reconcile()
            timeout = self._next_poll_timeout()
            self._wake.wait(timeout)
            self._wake.clear()

    def _next_poll_timeout(self) -> float | None:
        timeouts = [float(self.poll_seconds)] if self.poll_seconds > 0 else []
        with self._lock:
            retries = [v.next_attempt for m in self._models.values() for v in m.versions.values()
                       if v.state == State.LOADING and v.next_attempt]
        if retries:
            timeouts.append(max(0.0, min(retries) - time.monotonic()))
        return min(timeouts) if timeouts else None

    def reconcile(self) -> None:
        """One pass: discover versions, load what the policies want, unload what they don't."""
        with self._reconcile_lock:
            with self._lock:
                models = list(self._models.values())
            for model in models:
                self._reconcile_model(model)

    def _reconcile_model(self, model: Model) -> None:
        with self._lock:
            in_config, config = model.in_config, model.config
        aspired: list[int] = []
        if in_config:
            on_disk = self._discover(model.name, Path(config.base_path))
            aspired = aspired_versions(config, sorted(on_disk))
            for number in aspired:
                self._load_if_needed(model, number, on_disk[number])
        with self._lock:
            aspired_available = any(
                model.versions[n].state == State.AVAILABLE for n in aspired if n in model.versions)
            doomed = [v for n, v in model.versions.items()
                      if n not in aspired and v.state == State.AVAILABLE
                      and (aspired_available or not aspired)]
            for version in doomed:
                version.state = State.UNLOADING
        for version in doomed:
            self._unload(model, version)

    def _discover(self, name: str, base: Path) -> dict[int, Path]:
        try:
            children = list(base.iterdir())
        except OSError as exc:
            log.error("model %s: cannot read base path %s: %s", name, base, exc.strerror)
            return {}
        found: dict[int, Path] = {}
        for child in sorted(children):
            if child.is_dir() and child.name.isdigit() and is_loadable(child, self.prefer_tflite):
                found.setdefault(int(child.name), child)
        if not found:
            log.warning("No versions of servable %s found under base path %s. Did you forget to "
                        "name your leaf directory as a number (eg. '/1/')?", name, base)
        return found

    def _load_if_needed(self, model: Model, number: int, path: Path) -> None:
        with self._lock:
            version = model.versions.get(number)
            if version is not None and version.state == State.END and version.error_code == "OK":
                version = None  # unloaded earlier and aspired again: load afresh
            if version is None:
                version = model.versions[number] = Version(number, path)
            elif version.state != State.START and not (
                    version.state == State.LOADING and time.monotonic() >= version.next_attempt):
                return
            version.state = State.LOADING
            self._changed.notify_all()
        started = time.monotonic()
        try:
            servable = self._loader(path, self.prefer_tflite)
        except Exception as exc:  # any load failure is reported through the version status
            self._load_failed(model, version, exc, time.monotonic() - started)
            return
        self.metrics.load(str(path), True, (time.monotonic() - started) * 1e6)
        with self._lock:
            version.servable, version.faults = servable, FaultInjector(path)
            version.state, version.error_code, version.error_message = State.AVAILABLE, "OK", ""
            self._changed.notify_all()
        log.info("model %s version %d AVAILABLE (%s, %.2fs)", model.name, number,
                 servable.runtime, time.monotonic() - started)

    def _load_failed(self, model: Model, version: Version, exc: Exception, seconds: float) -> None:
        self.metrics.load(str(version.path), False, seconds * 1e6)
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        with self._lock:
            version.attempts += 1
            if version.attempts <= self.max_load_retries:
                version.next_attempt = time.monotonic() + self.retry_interval_seconds
                log.warning("model %s version %d failed to load (attempt %d), retrying in %.0fs: %s",
                            model.name, version.number, version.attempts,
                            self.retry_interval_seconds, message)
            else:
                version.state, version.error_code = State.END, "UNKNOWN"
                version.error_message = message
                log.error("model %s version %d failed to load: %s", model.name, version.number,
                          message)
            self._changed.notify_all()

    def _unload(self, model: Model, version: Version) -> None:
        """UNLOADING already refuses new requests; wait for those in flight (TF Serving's
        servable handles), then close the session."""
        deadline = time.monotonic() + UNLOAD_WAIT_SECONDS
        with self._changed:
            while version.in_flight and time.monotonic() < deadline:
                self._changed.wait(timeout=0.1)
        servable = version.servable
        if servable is not None:
            servable.close()
        with self._lock:
            version.servable, version.state = None, State.END
            self._changed.notify_all()
        log.info("model %s version %d unloaded (END)", model.name, version.number)

    # -- lookups ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def acquire(self, name: str, version: int | None = None,
                label: str | None = None) -> Iterator[tuple[Version, Servable]]:
        """Hold a version for the length of a request (it cannot be unloaded meanwhile)."""
        with self._lock:
            entry, servable = self.resolve(name, version, label)
            entry.in_flight += 1
        try:
            yield entry, servable
        finally:
            with self._changed:
                entry.in_flight -= 1
                self._changed.notify_all()

    def resolve(self, name: str, version: int | None = None,
                label: str | None = None) -> tuple[Version, Servable]:
        """The servable a request addresses, with TF Serving's error for each miss."""
        with self._lock:
            model = self._models.get(name)
            if label:
                if model is None or label not in model.labels:
                    raise ServingStatus("INVALID_ARGUMENT",
                                        f"Unrecognized servable version label: {label}")
                version = model.labels[label]
            if version is not None:
                entry = model.versions.get(version) if model else None
                if entry is None or entry.state != State.AVAILABLE or entry.servable is None:
                    raise not_found_specific(name, version)
                return entry, entry.servable
            available = [v for v in (model.versions.values() if model else [])
                         if v.state == State.AVAILABLE and v.servable is not None]
            if not available:
                raise not_found_latest(name)
            best = max(available, key=lambda v: v.number)
            assert best.servable is not None
            return best, best.servable

    def status(self, name: str, version: int | None = None) -> list[Version]:
        """Versions of ``name`` newest first (one when ``version`` is given)."""
        with self._lock:
            model = self._models.get(name)
            if model is None or not model.versions:
                raise ServingStatus("NOT_FOUND", f"Could not find any versions of model {name}")
            if version is not None:
                if version not in model.versions:
                    raise ServingStatus("NOT_FOUND",
                                        f"Could not find version {version} of model {name}")
                return [model.versions[version]]
            return [model.versions[n] for n in sorted(model.versions, reverse=True)]

    def model_names(self) -> list[str]:
        with self._lock:
            return sorted(n for n, m in self._models.items() if m.in_config)
