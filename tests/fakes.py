"""Small real implementations of tfwarden's ports, for tests that need no processes.

- ``FakeClock``: time moves only when the test says so;
- ``MemoryStateStore``: the state store in memory (the contract suite runs it beside SQLite);
- ``RecordingRouter``: a router that remembers every weight it was asked for (and can fail);
- ``FakeServer``: a TF Serving server as the lifecycle sees it (versions with states, labels
  that only point at AVAILABLE versions, a base path with version directories), recording
  every call, with faults on demand;
- ``RecordingScheduler``: a scheduler that only remembers its jobs; the test runs them.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tfwarden.core.clock import ManualClock
from tfwarden.core.errors import RouterError, ServingError
from tfwarden.core.ports import JournalEntry
from tfwarden.core.types import VersionState
from tfwarden.serving.tfserving.modelconfig import newest_version
from tfwarden.serving.tfserving.rows import InputSpec, Row


class FakeClock(ManualClock):
    """A clock for tests: starts at a fixed date, moves with ``advance``."""

    def __init__(self, t: float = 1_764_000_000.0) -> None:
        super().__init__(t)


class MemoryStateStore:
    """``core.ports.StateStore`` in memory (values round-trip through JSON, as in SQLite)."""

    def __init__(self) -> None:
        self._journal: list[JournalEntry] = []
        self._kv: dict[str, str] = {}
        self._last_id = 0

    def append(self, t: float, kind: str, payload: dict[str, Any], model: str | None = None) -> int:
        self._last_id += 1
        entry = JournalEntry(self._last_id, t, kind, model, json.loads(json.dumps(payload)))
        self._journal.append(entry)
        return entry.id

    def entries(self, after_id: int = 0, limit: int = 100, kind: str | None = None,
                model: str | None = None, newest_first: bool = False) -> list[JournalEntry]:
        selected = [e for e in self._journal
                    if e.id > after_id and kind in (None, e.kind) and model in (None, e.model)]
        return selected[::-1][:limit] if newest_first else selected[:limit]

    def put(self, key: str, value: Any, t: float) -> None:
        self._kv[key] = json.dumps(value)

    def put_new(self, key: str, value: Any, t: float) -> Any:
        if self.get(key) is None:
            self.put(key, value, t)
        return self.get(key)

    def get(self, key: str) -> Any:
        raw = self._kv.get(key)
        return None if raw is None else json.loads(raw)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        journal, kv, last_id = list(self._journal), dict(self._kv), self._last_id
        try:
            yield
        except BaseException:
            self._journal[:], self._kv, self._last_id = journal, kv, last_id
            raise

    def prune(self, now: float, max_age_seconds: float, max_bytes: int) -> int:
        kept, size = [], 0
        for entry in reversed(self._journal):
            size += len(json.dumps(entry.payload, sort_keys=True)) + 96
            if entry.t < now - max_age_seconds or size > max_bytes:
                break
            kept.append(entry)
        gone = len(self._journal) - len(kept)
        self._journal[:] = list(reversed(kept))
        return gone

    def checkpoint(self) -> None:
        pass

    def close(self) -> None:
        pass

    def kinds(self) -> list[str]:
        return [e.kind for e in self._journal]


@dataclass
class RecordingRouter:
    """A router that records ``(model, weight)``; ``fail`` makes the next calls raise."""

    name: str = "labels"
    applied: list[tuple[str, int]] = field(default_factory=list)
    fail: bool = False

    async def apply(self, model: str, weight: int) -> None:
        if self.fail:
            raise RouterError(f"routing of {model!r} refused (test)")
        self.applied.append((model, weight))


@dataclass
class FakeServer:
    """A TF Serving server as the lifecycle sees it (``lifecycle.effects.ModelServer``).

    ``versions`` maps each loaded version to its state; ``labels`` are the config file's labels;
    ``base`` holds version directories (``add_version_dir``). ``fail_on`` names calls that raise
    ServingError; every call is recorded in ``calls``."""

    base: Path
    versions: dict[int, str] = field(default_factory=dict)
    model_labels: dict[str, int] = field(default_factory=dict)
    calls: list[tuple[Any, ...]] = field(default_factory=list)
    fail_on: set[str] = field(default_factory=set)

    def add_version_dir(self, version: int) -> None:
        directory = self.base / str(version)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "saved_model.pb").write_bytes(b"")

    def _call(self, name: str, *args: Any) -> None:
        self.calls.append((name, *args))
        if name in self.fail_on:
            raise ServingError(f"{name} refused (test)")

    def _load(self, versions: Iterable[int]) -> None:
        for version in versions:
            if not (self.base / str(version)).is_dir():
                raise ServingError(f"version {version} has no directory under {self.base}")
            self.versions[version] = "AVAILABLE"

    def _keep_only(self, keep: Iterable[int]) -> None:
        for version in [v for v in self.versions if v not in set(keep)]:
            self.versions[version] = "END"

    async def stage_canary(self, model: str, version: int) -> None:
        self._call("stage_canary", model, version)
        self._load([version])
        self.model_labels["canary"] = version

    async def promote(self, model: str, version: int) -> None:
        self._call("promote", model, version)
        self.model_labels.update(stable=version, canary=version)

    async def rollback(self, model: str, to_version: int) -> None:
        self._call("rollback", model, to_version)
        self._load([to_version])
        self.model_labels = {**self._foreign(), "stable": to_version}
        self._keep_only(self.model_labels.values())

    async def set_labels(self, model: str, labels: dict[str, int],
                         keep: tuple[int, ...] = ()) -> None:
        self._call("set_labels", model, dict(labels), keep)
        missing = [v for v in labels.values() if self.versions.get(v) != "AVAILABLE"]
        if missing:
            raise ServingError(f"labels may only point at AVAILABLE versions: {missing}")
        self.model_labels = {**self._foreign(), **labels}
        self._keep_only({*self.model_labels.values(), *keep})

    def _foreign(self) -> dict[str, int]:
        """Labels tfwarden does not own stay, as the real controller keeps them."""
        return {k: v for k, v in self.model_labels.items() if k not in ("stable", "canary")}

    async def states(self, model: str) -> dict[int, tuple[str, str]]:
        self._call("states", model)
        return {v: (state, "") for v, state in self.versions.items()}

    def labels(self, model: str) -> dict[str, int]:
        return dict(self.model_labels)

    def base_path(self, model: str) -> Path:
        return self.base

    def newest_version(self, model: str) -> int | None:
        return newest_version(self.base)


@dataclass(frozen=True)
class ScheduledJob:
    func: Callable[[], Awaitable[None]]
    interval_seconds: float
    jitter: float
    run_now: bool


@dataclass
class RecordingScheduler:
    """``core.ports.Scheduler`` that runs nothing by itself: ``jobs`` holds what was added (and
    not removed), ``removed`` the names removed, and ``run(name)`` runs one job once."""

    jobs: dict[str, ScheduledJob] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)

    def add(self, name: str, func: Callable[[], Awaitable[None]], interval_seconds: float,
            jitter: float = 0, run_now: bool = False) -> None:
        self.jobs[name] = ScheduledJob(func, interval_seconds, jitter, run_now)

    def remove(self, name: str) -> None:
        self.jobs.pop(name, None)
        self.removed.append(name)

    async def run(self, name: str) -> None:
        await self.jobs[name].func()


@dataclass
class FakeServingClient:
    """A model server's client: ``versions`` (version -> state name) for GetModelStatus, one
    float input ``x``, and ``functions`` (version -> f(x)) for predictions. Setting ``error``
    makes every call raise ServingError with it; ``calls`` records them."""

    versions: dict[int, str] = field(default_factory=lambda: {1: "AVAILABLE"})
    functions: dict[int, Callable[[float], float]] = field(default_factory=dict)
    name: str = "tfs"
    grpc_address: str | None = "tfs:8500"
    error: str | None = None
    calls: list[tuple[Any, ...]] = field(default_factory=list)

    def _call(self, *call: Any) -> None:
        self.calls.append(call)
        if self.error is not None:
            raise ServingError(f"{call[0]}({call[1]!r}): {self.error}")

    async def model_status(self, model: str) -> list[VersionState]:
        self._call("model_status", model)
        return [VersionState(v, state) for v, state in sorted(self.versions.items())]

    async def inputs(self, model: str, version: int | None = None, label: str | None = None,
                     signature: str = "") -> list[InputSpec]:
        self._call("inputs", model)
        return [InputSpec("x", 1, (-1,))]

    def cached_inputs(self, model: str) -> list[InputSpec]:
        return [InputSpec("x", 1, (-1,))]

    def predictions(self) -> Any:
        raise NotImplementedError("FakeServingClient has no gRPC Predict")

    async def predict_rows(self, model: str, version: int, rows: Sequence[Row],
                           specs: Sequence[InputSpec]) -> tuple[list[str], list[Row]]:
        self._call("predict_rows", model, version, len(rows))
        f = self.functions[version]
        return ["output"], [[f(float(row[0]))] for row in rows]


class FakePoster:
    """The REST predict probes' HTTP client (probes.predict.JsonPoster) answered in process:
    ``handler(url, body)`` returns (status, JSON-able body or raw bytes), or raises
    ProbeTransportError for a timeout or a refused connection."""

    def __init__(self, handler: Callable[[str, Any], tuple[int, Any]]) -> None:
        self.handler = handler

    async def post(self, url: str, body: bytes, timeout: float) -> tuple[int, bytes]:
        status, answer = self.handler(url, json.loads(body))
        return status, answer if isinstance(answer, bytes) else json.dumps(answer).encode()
