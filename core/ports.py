"""The small interfaces stages meet through (``daemon/build`` plugs the implementations in).

Each is a Protocol with one to five methods: the journal and the state store, where samples,
version states, lifecycle statuses and findings flow, and the metrics each stage records.
Implementations live with their stage (``tfwarden.daemon.state.SQLiteStateStore``,
``tfwarden.detectors.roster.Roster``...); tests use the small fakes in ``tests/fakes.py``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tfwarden.core.events import Event
from tfwarden.core.status import ModelStatus
from tfwarden.core.types import Decision, Finding, Sample, VersionState

Row = list[float | str]
FindingKey = tuple[str, str, Any]  # (detector, model or target, which one of the model's)


# -- durable state ------------------------------------------------------------------------------
@dataclass(frozen=True)
class JournalEntry:
    """One journaled event as stored."""

    id: int
    t: float
    kind: str
    model: str | None
    payload: dict[str, Any]


class StateStore(Protocol):
    """Durable state of one daemon.

    ``append`` adds an event to the append-only journal and returns its id; ``entries`` reads
    events after ``after_id`` in id order (``newest_first``: the latest ``limit`` of them, latest
    first), optionally filtered by kind and model; ``put``/``get``
    store JSON-serialisable values by key (``get`` returns None when absent); what is written
    inside ``transaction()`` commits together or not at all; ``prune`` applies the journal's
    retention (the oldest entries only) and returns how many went. Methods raise StateError
    when the store cannot be used.
    """

    def append(self, t: float, kind: str, payload: dict[str, Any], model: str | None = None) -> int:
        ...

    def entries(self, after_id: int = 0, limit: int = 100, kind: str | None = None,
                model: str | None = None, newest_first: bool = False) -> list[JournalEntry]: ...

    def put(self, key: str, value: Any, t: float) -> None: ...

    def put_new(self, key: str, value: Any, t: float) -> Any:
        """Store ``value`` unless the key holds one already (another replica may have been
        first); return the value the key holds after."""
        ...

    def get(self, key: str) -> Any: ...

    def transaction(self) -> AbstractContextManager[None]: ...

    def prune(self, now: float, max_age_seconds: float, max_bytes: int) -> int: ...

    def checkpoint(self) -> None: ...

    def close(self) -> None: ...


class KeyValueStore(Protocol):
    """The part of the state store a stage keeps its own state in; a ``transaction`` also
    takes in what the journal appends meanwhile (both live in one store)."""

    def put(self, key: str, value: Any, t: float) -> None: ...

    def put_new(self, key: str, value: Any, t: float) -> Any:
        """Store ``value`` unless the key holds one already (another replica may have been
        first); return the value the key holds after."""
        ...

    def get(self, key: str) -> Any: ...

    def transaction(self) -> AbstractContextManager[None]: ...


class Journal(Protocol):
    """Appends a typed event (with the time and its model) and returns its id."""

    def record(self, event: Event) -> int: ...


class Fence(Protocol):
    """Who may act on a unit of ownership (a serving endpoint's model config file, an edge
    rollout): ``daemon.leases``. One daemon alone owns everything; replicas sharing PostgreSQL
    hold leases with fencing tokens."""

    def may_act(self, unit: str) -> bool:
        """This replica holds the unit's lease and confirmed it within its TTL (no I/O)."""
        ...

    def check(self, unit: str) -> None:
        """Raise LeaseLost unless the state store says this replica's token still holds the
        unit; called inside ``KeyValueStore.transaction`` the check and the writes are one."""
        ...


class Scheduler(Protocol):
    """Runs coroutine functions periodically (``tfwarden.daemon.jobs.JobRunner``)."""

    def add(self, name: str, func: Callable[[], Awaitable[None]], interval_seconds: float,
            jitter: float = 0, run_now: bool = False) -> None:
        """Run ``func`` every ``interval_seconds`` (replacing a job of the same name), starting
        at once when ``run_now``."""
        ...

    def remove(self, name: str) -> None: ...


# -- what flows between stages ------------------------------------------------------------------
class SampleSink(Protocol):
    def observe(self, sample: Sample) -> object: ...


class VersionStatusSink(Protocol):
    """Told what the server reports for a model: its versions, and its labels when known."""

    def versions_seen(self, model: str, versions: Sequence[VersionState],
                      labels: Mapping[str, int] | None) -> None: ...


class StatusListener(Protocol):
    """Told each lifecycle status as soon as it changes (the role tracker follows it)."""

    def status_changed(self, status: ModelStatus) -> None: ...


class EdgeRolloutListener(Protocol):
    """Told an edge model's rollout versions as soon as they change (the cohort verdicts)."""

    def rollout_changed(self, model: str, current: int | None, candidate: int | None) -> None: ...


class EdgeFindingSource(Protocol):
    """The per-cohort findings of an edge model's rollout, and how many candidate devices
    have been counted so far."""

    def findings(self, model: str, now: float) -> list[Finding]: ...

    def candidate_devices(self, model: str) -> int: ...


class Roles(Protocol):
    def roles(self, model: str) -> tuple[int | None, int | None]:
        """(stable, canary) versions of ``model``; None where there is none."""
        ...


class FindingSink(Protocol):
    """Keeps the latest finding under ``key``; journals and logs verdict changes."""

    def publish(self, key: FindingKey, finding: Finding) -> object: ...


class FindingSource(Protocol):
    def findings(self) -> list[Finding]: ...


class CapturedRows(Protocol):
    """Input rows captured from mirrored traffic and client samples (``probes.capture``)."""

    def take_new(self, model: str) -> list[tuple[int | None, Row]]:
        """Rows captured since the last call, oldest first, with the version they were for."""
        ...

    def kept_rows(self, model: str, version: int) -> tuple[list[str], list[Row]]:
        """Feature names and the reservoir rows of ``version`` and of unversioned captures."""
        ...


class CalibrationSource(Protocol):
    def calibration_inputs(self, model: str) -> Path | tuple[list[str], list[Row]] | None:
        """Inputs representative of ``model``'s traffic (its drift reference): a file,
        (feature names, rows), or None."""
        ...


class Policy(Protocol):
    def decide(self, findings: Sequence[Finding], statuses: Mapping[str, ModelStatus],
               now: float) -> list[Decision]:
        """Decisions for every model (deterministic; remembers verdict history between calls)."""
        ...


# -- metrics (one Recorder implements them all: tfwarden.daemon.recorder) -----------------------
class ProbeMetrics(Protocol):
    def probe_request(self, model: str, version: str, target: str, outcome: str,
                      latency_seconds: float) -> None: ...

    def probe_skipped(self, model: str, version: str, target: str, count: int) -> None: ...

    def probe_late(self, seconds: float) -> None: ...

    def probe_ran(self, probe: str, ok: bool) -> None: ...

    def version_state(self, serving: str, model: str, version: int, state: float) -> None: ...

    def memory(self, target: str, kind: str, value: float) -> None: ...


class CaptureMetrics(Protocol):
    def captured(self, model: str, outcome: str, status: int, rows: int) -> None: ...


class FindingMetrics(Protocol):
    """Exports findings. ``series`` names the detector a finding comes from (the roster's
    FindingKey) when one model has several of a kind with one target (a burn-rate detector per
    version, all with target "slo"); None: detector, model and target name it."""

    def finding(self, finding: Finding, series: Hashable | None = None) -> None: ...

    def forget_finding(self, detector: str, model: str, target: str,
                       series: Hashable | None = None) -> None: ...


class DriftMetrics(CaptureMetrics, Protocol):
    def drift_report(self, model: str, report: dict[str, Any], drifted: bool) -> None: ...

    def drift_disagreement(self, model: str, version: int, ratio: float) -> None: ...

    def drift_worker(self, up: bool, restarted: bool = False,
                     rss_bytes: int | None = None) -> None: ...


class LifecycleMetrics(Protocol):
    def decision(self, model: str, action: str, dry_run: bool) -> None: ...

    def action(self, model: str, action: str, outcome: str) -> None: ...

    def model_phase(self, model: str, phase: str, weight: int) -> None: ...

    def notified(self, notifier: str, ok: bool) -> None: ...


class EdgeIngestMetrics(Protocol):
    def edge_ingested(self, signal: str, accepted: int, rejected: int) -> None:
        """Data points (``metrics``) or log records (``logs``) of one OTLP request kept and
        rejected (partial success)."""
        ...


class EdgeRolloutMetrics(Protocol):
    def edge_rollout(self, model: str, phase: str, percent: int, pinned: int) -> None: ...

    def edge_action(self, model: str, action: str, outcome: str) -> None: ...
