"""What tfwarden journals: typed, past-tense events.

Each event is a frozen dataclass with a ``kind`` (the journal's ``kind`` column, stable across
releases: operators and the demo read them) and a JSON ``payload``. The journal port
(``tfwarden.core.ports.Journal``) takes these and nothing else, so every kind and its fields are
listed here once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from tfwarden.core.status import ModelStatus
from tfwarden.core.types import Decision, Finding


@dataclass(frozen=True)
class Event:
    """Base class: ``kind`` names the event in the journal; ``model`` the model it concerns."""

    kind: ClassVar[str] = ""

    @property
    def subject(self) -> str | None:
        """The model the event concerns (the journal's ``model`` column), if any."""
        model = getattr(self, "model", None)
        return model or None

    def payload(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}


def _plain(value: Any) -> Any:
    if hasattr(value, "to_json"):
        return value.to_json()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


# -- the daemon ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class DaemonStarting(Event):
    kind: ClassVar[str] = "daemon_starting"
    pid: int
    version: str


@dataclass(frozen=True)
class DaemonStopped(Event):
    kind: ClassVar[str] = "daemon_stopped"
    cancelled_jobs: int


@dataclass(frozen=True)
class ConfigLoaded(Event):
    kind: ClassVar[str] = "config_loaded"
    generation: int
    trigger: str


@dataclass(frozen=True)
class ConfigReloadFailed(Event):
    kind: ClassVar[str] = "config_reload_failed"
    trigger: str
    error: str


# -- detection and policies ---------------------------------------------------------------------
@dataclass(frozen=True)
class VerdictChanged(Event):
    """A detector's verdict changed (or was seen for the first time)."""

    kind: ClassVar[str] = "finding"
    finding: Finding

    @property
    def subject(self) -> str | None:
        return self.finding.model or None

    def payload(self) -> dict[str, Any]:
        return self.finding.to_json()


@dataclass(frozen=True)
class DecisionTaken(Event):
    """A rule decided (the payload is the decision with the findings it used)."""

    kind: ClassVar[str] = "decision"
    decision: Decision

    @property
    def subject(self) -> str | None:
        return self.decision.model

    def payload(self) -> dict[str, Any]:
        return self.decision.to_json()


@dataclass(frozen=True)
class ApprovalRequested(DecisionTaken):
    """A rule with ``require_approval`` decided; the decision waits for POST .../approve."""

    kind: ClassVar[str] = "awaiting_approval"


# -- lifecycle ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelAdopted(Event):
    kind: ClassVar[str] = "lifecycle_adopted"
    model: str
    stable_version: int


@dataclass(frozen=True)
class NewVersionFound(Event):
    kind: ClassVar[str] = "new_version"
    model: str
    version: int


@dataclass(frozen=True)
class ActionIntended(Event):
    """Written before an action touches anything; its id ties the outcome to it."""

    kind: ClassVar[str] = "action_intent"
    model: str
    action: str
    params: Mapping[str, Any]
    origin: str
    from_status: ModelStatus

    def payload(self) -> dict[str, Any]:
        return {"model": self.model, "action": self.action, "params": _plain(self.params),
                "origin": self.origin, "from": self.from_status.to_json()}


@dataclass(frozen=True)
class ActionDone(Event):
    kind: ClassVar[str] = "action_done"
    intent_id: int
    model: str
    action: str
    params: Mapping[str, Any]
    seconds: float
    status: ModelStatus


@dataclass(frozen=True)
class ActionFailed(Event):
    kind: ClassVar[str] = "action_failed"
    intent_id: int
    model: str
    action: str
    error: str


@dataclass(frozen=True)
class OperatorActed(Event):
    """An operator's request through the API was carried out."""

    kind: ClassVar[str] = "manual_action"
    model: str
    action: str


@dataclass(frozen=True)
class _AlertEvent(Event):
    kind: ClassVar[str] = "alert"
    labels: Mapping[str, str]

    @property
    def subject(self) -> str | None:
        return self.labels.get("model") or None


@dataclass(frozen=True)
class AlertFired(_AlertEvent):
    """One of tfwarden's alerts fired (``labels`` identify it)."""

    summary: str = ""

    def payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {"state": "firing", **self.labels}
        if self.summary:
            payload["summary"] = self.summary
        return payload


@dataclass(frozen=True)
class AlertResolved(_AlertEvent):
    """One of tfwarden's alerts was resolved."""

    def payload(self) -> dict[str, Any]:
        return {"state": "resolved", **self.labels}


# -- reoptimize ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReoptimizeRefused(Event):
    """The reoptimize action cannot run for this model (what is missing is the reason)."""

    kind: ClassVar[str] = "reoptimize_refused"
    model: str
    reason: str
    origin: str = ""

    def payload(self) -> dict[str, Any]:
        payload = {"model": self.model, "reason": self.reason}
        return {**payload, "origin": self.origin} if self.origin else payload


@dataclass(frozen=True)
class ReoptimizeSkipped(Event):
    kind: ClassVar[str] = "reoptimize_skipped"
    model: str
    method: str
    stable_version: int | None
    reason: str


@dataclass(frozen=True)
class ReoptimizeStarted(Event):
    kind: ClassVar[str] = "reoptimize_started"
    model: str
    method: str
    source_version: int
    origin: str


@dataclass(frozen=True)
class ReoptimizeFailed(Event):
    kind: ClassVar[str] = "reoptimize_failed"
    intent_id: int
    model: str
    error: str


@dataclass(frozen=True)
class Reoptimized(Event):
    """An optimized variant passed the gate and was published as a new version."""

    kind: ClassVar[str] = "reoptimized"
    intent_id: int
    model: str
    report: Mapping[str, Any] = field(default_factory=dict)

    def payload(self) -> dict[str, Any]:
        return {"intent_id": self.intent_id, **_plain(self.report)}


@dataclass(frozen=True)
class ReoptimizeRejected(Event):
    """The gate rejected the candidate; nothing was published."""

    kind: ClassVar[str] = "reoptimize_rejected"
    intent_id: int
    model: str
    report: Mapping[str, Any] = field(default_factory=dict)

    def payload(self) -> dict[str, Any]:
        return {"intent_id": self.intent_id, **_plain(self.report)}


# -- edge rollouts (the rollout's status is a plain mapping: tfwarden.lifecycle.edge) -----------
@dataclass(frozen=True)
class EdgeAdopted(Event):
    kind: ClassVar[str] = "edge_adopted"
    model: str
    version: int


@dataclass(frozen=True)
class EdgeActionIntended(Event):
    """Written before an edge rollout changes; its id ties the outcome to it."""

    kind: ClassVar[str] = "edge_action_intent"
    model: str
    action: str
    params: Mapping[str, Any]
    origin: str
    rollout: Mapping[str, Any]

    def payload(self) -> dict[str, Any]:
        return {"model": self.model, "action": self.action, "params": _plain(self.params),
                "origin": self.origin, "from": _plain(self.rollout)}


@dataclass(frozen=True)
class EdgeActionDone(Event):
    kind: ClassVar[str] = "edge_action_done"
    intent_id: int
    model: str
    action: str
    params: Mapping[str, Any]
    rollout: Mapping[str, Any]
    findings: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True)
class EdgeActionFailed(Event):
    kind: ClassVar[str] = "edge_action_failed"
    intent_id: int
    model: str
    action: str
    error: str


EVENTS: tuple[type[Event], ...] = (
    DaemonStarting, DaemonStopped, ConfigLoaded, ConfigReloadFailed, VerdictChanged,
    DecisionTaken, ApprovalRequested, ModelAdopted, NewVersionFound, ActionIntended, ActionDone,
    ActionFailed, OperatorActed, AlertFired, AlertResolved, ReoptimizeRefused,
    ReoptimizeSkipped, ReoptimizeStarted, ReoptimizeFailed, Reoptimized, ReoptimizeRejected,
    EdgeAdopted, EdgeActionIntended, EdgeActionDone, EdgeActionFailed)
KINDS = frozenset(e.kind for e in EVENTS)
