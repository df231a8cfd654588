"""A model's lifecycle status: phases, the table of allowed transitions, the status value.

Transitions are a table, not code paths: ``transition`` refuses anything the table does not
list, naming the phases. The status is a frozen value persisted in the state store, so a
restarted daemon resumes where it stopped. Policies read it, the lifecycle changes it (through
``tfwarden.lifecycle.reconcile``), the detectors' role tracker follows it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import Any

from tfwarden.core.errors import InvalidTransition


class Phase(enum.StrEnum):
    STABLE = "stable"                # one version serves; nothing under evaluation
    CANARY_SHADOW = "canary_shadow"  # a new version is loaded; tfwarden replays golden traffic to it
    CANARY_LIVE = "canary_live"      # the canary takes a share of live traffic (``weight`` %)
    PROMOTING = "promoting"          # labels are moving to the canary (an action is in flight)
    ROLLING_BACK = "rolling_back"    # labels are moving back to the previous version
    ROLLED_BACK = "rolled_back"      # the canary was removed; stable serves; waiting for a new one
    PAUSED = "paused"                # an operator paused automation; nothing moves until resume


TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    Phase.STABLE: frozenset({Phase.CANARY_SHADOW, Phase.CANARY_LIVE, Phase.ROLLING_BACK,
                             Phase.PAUSED}),
    Phase.CANARY_SHADOW: frozenset({Phase.CANARY_LIVE, Phase.ROLLING_BACK, Phase.PAUSED}),
    Phase.CANARY_LIVE: frozenset({Phase.CANARY_LIVE, Phase.PROMOTING, Phase.ROLLING_BACK,
                                  Phase.PAUSED}),
    Phase.PROMOTING: frozenset({Phase.STABLE, Phase.ROLLING_BACK}),
    Phase.ROLLING_BACK: frozenset({Phase.ROLLED_BACK, Phase.STABLE}),
    Phase.ROLLED_BACK: frozenset({Phase.CANARY_SHADOW, Phase.CANARY_LIVE, Phase.STABLE,
                                  Phase.ROLLING_BACK, Phase.PAUSED}),
    Phase.PAUSED: frozenset(Phase) - {Phase.PAUSED},
}


@dataclass(frozen=True)
class ModelStatus:
    """Where one model's lifecycle stands."""

    model: str
    phase: Phase = Phase.STABLE
    stable_version: int | None = None
    canary_version: int | None = None
    previous_good: int | None = None
    weight: int = 0
    since: float = 0.0
    promoted_at: float | None = None
    paused_from: Phase | None = None
    last_error: str = ""
    rejected: tuple[int, ...] = ()  # versions rolled back: never staged again automatically

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "phase": self.phase.value,
                "stable_version": self.stable_version, "canary_version": self.canary_version,
                "previous_good": self.previous_good, "weight": self.weight, "since": self.since,
                "promoted_at": self.promoted_at,
                "paused_from": self.paused_from.value if self.paused_from else None,
                "last_error": self.last_error, "rejected": list(self.rejected)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelStatus:
        return cls(model=data["model"], phase=Phase(data["phase"]),
                   stable_version=data.get("stable_version"),
                   canary_version=data.get("canary_version"),
                   previous_good=data.get("previous_good"), weight=int(data.get("weight", 0)),
                   since=float(data.get("since", 0.0)), promoted_at=data.get("promoted_at"),
                   paused_from=Phase(data["paused_from"]) if data.get("paused_from") else None,
                   last_error=data.get("last_error", ""),
                   rejected=tuple(data.get("rejected", ())))



def transition(status: ModelStatus, to: Phase, now: float, **changes: Any) -> ModelStatus:
    """The status after moving to ``to`` (with field ``changes``); InvalidTransition if the
    table forbids it."""
    if to not in TRANSITIONS[status.phase]:
        allowed = ", ".join(sorted(p.value for p in TRANSITIONS[status.phase]))
        raise InvalidTransition(f"model {status.model!r}: cannot go from {status.phase.value} to "
                                f"{to.value} (allowed: {allowed})")
    return replace(status, phase=to, since=now if to != status.phase else status.since, **changes)
