"""Staged edge rollouts, pure: the rollout's status, its actions as data, the transition table,
the policy that decides them from per-cohort findings, and the sticky assignment of devices.

A rollout offers a published edge version (a version directory with ``manifest.json``) to a
growing share of an edge model's devices: ``steps`` percentages, each held at least
``min_step_seconds`` and until ``min_devices`` more candidate devices have reported. A device's
share is fixed by a hash of its (already hashed) id and the model name, so a device on the
candidate stays on it as the share grows, and a restarted daemon assigns the same way. A cohort
found regressing is pinned to the current version while the rollout goes on for the others
(``on_regression: rollback_cohort``); with more than ``max_pinned_cohorts`` pinned, or
``on_regression: rollback``, it is rolled back for everyone; ``halt`` stops it where it is.
Pins outlive the rollout: a cohort pinned during version 3's rollout keeps the version before
until an operator unpins it.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from tfwarden.core.errors import ActionRefused, LifecycleError
from tfwarden.core.settings import Settings
from tfwarden.core.types import REGRESSION, Finding
from tfwarden.lifecycle.actions import Action

BUCKETS = 10_000  # a device's share is its bucket / BUCKETS


class EdgeRolloutSettings(Settings):
    """How an edge model's new versions roll out (``edge.models[].rollout``; docs/edge.md)."""

    steps: list[int] = Field([5, 25, 50, 100], min_length=1, max_length=20,
                             description="Percent of devices on the candidate at each step.")
    min_step_seconds: float = Field(600.0, ge=0, le=30 * 86400)
    min_devices: int = Field(100, ge=0, le=10_000_000,
                             description="New candidate devices counted per step before it ends.")
    on_regression: Literal["rollback_cohort", "halt", "rollback"] = "rollback_cohort"
    max_pinned_cohorts: int = Field(3, ge=0, le=1000,
                                    description="More pinned cohorts roll back for everyone.")
    auto_start: bool = Field(True, description="Start a rollout for each newly published version.")
    assignment_ttl_seconds: float = Field(3600.0, gt=0, le=7 * 86400)

    @field_validator("steps")
    @classmethod
    def _steps(cls, steps: list[int]) -> list[int]:
        if any(not 0 < s <= 100 for s in steps) or steps != sorted(set(steps)) or steps[-1] != 100:
            raise ValueError("steps must be increasing percentages in 1..100 ending at 100")
        return steps


class EdgePhase(enum.StrEnum):
    IDLE = "idle"                # one version for every device (some cohorts may be pinned)
    ROLLING_OUT = "rolling_out"  # the candidate goes to ``percent`` % of the devices
    HALTED = "halted"            # stopped where it was: the share no longer grows
    ROLLED_BACK = "rolled_back"  # the candidate was taken back from everyone


TRANSITIONS: dict[str, frozenset[EdgePhase]] = {  # action -> phases it applies in
    "start": frozenset({EdgePhase.IDLE, EdgePhase.ROLLED_BACK}),
    "advance": frozenset({EdgePhase.ROLLING_OUT}),
    "halt": frozenset({EdgePhase.ROLLING_OUT}),
    "resume": frozenset({EdgePhase.HALTED}),
    "rollback": frozenset({EdgePhase.ROLLING_OUT, EdgePhase.HALTED}),
    "rollback_cohort": frozenset({EdgePhase.ROLLING_OUT, EdgePhase.HALTED}),
    "unpin": frozenset(EdgePhase),
}


@dataclass(frozen=True)
class EdgeRollout:
    """Where one edge model's rollout stands (persisted; resumes after a restart)."""

    model: str
    current: int | None = None
    phase: EdgePhase = EdgePhase.IDLE
    candidate: int | None = None
    percent: int = 0
    step: int = 0
    step_since: float = 0.0
    step_devices: int = 0  # candidate devices counted when the step began
    pinned: Mapping[str, int] = field(default_factory=dict)  # cohort -> version it keeps
    rejected: tuple[int, ...] = ()  # versions rolled back for everyone (never started again)
    overridden: tuple[str, ...] = ()  # cohorts an operator unpinned in this rollout: not re-pinned
    since: float = 0.0
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "phase": self.phase.value, "pinned": dict(self.pinned),
                "rejected": list(self.rejected), "overridden": list(self.overridden)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EdgeRollout:
        return cls(**{**data, "phase": EdgePhase(data["phase"]),
                      "pinned": {str(k): int(v) for k, v in data.get("pinned", {}).items()},
                      "rejected": tuple(data.get("rejected", ())),
                      "overridden": tuple(data.get("overridden", ()))})


# -- actions -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EdgeAction(Action):
    """An edge rollout action (data, like the server-side actions it derives from)."""


@dataclass(frozen=True)
class StartRollout(EdgeAction):
    name: ClassVar[str] = "start"
    version: int


@dataclass(frozen=True)
class Advance(EdgeAction):
    """The next step (after the last one the candidate becomes current)."""

    name: ClassVar[str] = "advance"


@dataclass(frozen=True)
class Halt(EdgeAction):
    name: ClassVar[str] = "halt"
    reason: str = ""


@dataclass(frozen=True)
class ResumeRollout(EdgeAction):
    name: ClassVar[str] = "resume"


@dataclass(frozen=True)
class RollbackAll(EdgeAction):
    name: ClassVar[str] = "rollback"
    reason: str = ""


@dataclass(frozen=True)
class RollbackCohort(EdgeAction):
    """Pin ``cohort`` to the current version; the rollout goes on for the others."""

    name: ClassVar[str] = "rollback_cohort"
    cohort: str
    reason: str = ""


@dataclass(frozen=True)
class Unpin(EdgeAction):
    name: ClassVar[str] = "unpin"
    cohort: str


EDGE_ACTIONS: dict[str, type[EdgeAction]] = {a.name: a for a in (
    StartRollout, Advance, Halt, ResumeRollout, RollbackAll, RollbackCohort, Unpin)}


def edge_action_from(name: str, params: Mapping[str, Any]) -> EdgeAction:
    """The action ``name`` with ``params`` (journaled, or an operator's request body)."""
    kind = EDGE_ACTIONS.get(name)
    if kind is None:
        raise ActionRefused(f"unknown edge action {name!r} (expected one of "
                            f"{', '.join(EDGE_ACTIONS)})")
    try:
        if kind is StartRollout:
            version = params["version"]
            if isinstance(version, str) and version.isascii() and version.isdigit():
                version = int(version)
            if not isinstance(version, int) or isinstance(version, bool) or \
                    not 0 < version < 2**63:
                raise ValueError("version must be a positive integer")
            return StartRollout(version)
        if kind in (RollbackCohort, Unpin):
            cohort = params["cohort"]
            if not isinstance(cohort, str) or not cohort:
                raise ValueError("cohort must be a cohort name")
            return RollbackCohort(cohort, str(params.get("reason", ""))) \
                if kind is RollbackCohort else Unpin(cohort)
        if kind in (Halt, RollbackAll):
            return kind(str(params.get("reason", "")))
    except (KeyError, TypeError, ValueError) as exc:
        raise ActionRefused(f"{name}: parameters {dict(params)} are not valid ({exc})") from None
    return kind()


# -- the transition table ----------------------------------------------------------------------
def outcome(action: EdgeAction, status: EdgeRollout, settings: EdgeRolloutSettings, now: float,
            devices: int = 0) -> EdgeRollout:
    """The status after ``action`` (``devices``: candidate devices counted so far).
    LifecycleError when the action does not apply to the status."""
    if status.phase not in TRANSITIONS[action.name]:
        raise LifecycleError(f"edge model {status.model!r}: {action.name} does not apply while "
                             f"{status.phase.value}")
    if isinstance(action, StartRollout):
        if status.current is None or action.version == status.current:
            raise LifecycleError(f"edge model {status.model!r}: version {action.version} is "
                                 "already current" if status.current else "has no current version")
        return replace(status, phase=EdgePhase.ROLLING_OUT, candidate=action.version,
                       percent=settings.steps[0], step=0, step_since=now, step_devices=0,
                       overridden=(), since=now, reason=f"rolling out v{action.version}")
    if isinstance(action, Advance):
        if status.step + 1 >= len(settings.steps) or status.percent >= 100:
            return replace(status, phase=EdgePhase.IDLE, current=status.candidate, candidate=None,
                           percent=0, step=0, step_since=now, since=now,
                           reason=f"v{status.candidate} rolled out to every device")
        step = status.step + 1
        return replace(status, step=step, percent=settings.steps[step], step_since=now,
                       step_devices=devices, reason=f"step {step + 1}: {settings.steps[step]} %")
    if isinstance(action, Halt):
        return replace(status, phase=EdgePhase.HALTED, since=now, reason=action.reason or "halted")
    if isinstance(action, ResumeRollout):
        return replace(status, phase=EdgePhase.ROLLING_OUT, since=now, step_since=now,
                       reason="resumed")
    if isinstance(action, RollbackAll):
        rejected = (*status.rejected[-19:], status.candidate) if status.candidate else status.rejected
        return replace(status, phase=EdgePhase.ROLLED_BACK, candidate=None, percent=0, step=0,
                       since=now, rejected=tuple(v for v in rejected if v is not None),
                       reason=action.reason or f"v{status.candidate} rolled back")
    if isinstance(action, RollbackCohort):
        if status.current is None:
            raise LifecycleError(f"edge model {status.model!r} has no current version to pin")
        return replace(status, pinned={**status.pinned, action.cohort: status.current},
                       reason=action.reason or f"cohort {action.cohort} pinned")
    if isinstance(action, Unpin):
        if action.cohort not in status.pinned:
            raise LifecycleError(f"edge model {status.model!r}: cohort {action.cohort!r} is "
                                 "not pinned")
        overridden = status.overridden if status.candidate is None or \
            action.cohort in status.overridden else (*status.overridden, action.cohort)
        return replace(status, pinned={k: v for k, v in status.pinned.items()
                                       if k != action.cohort}, overridden=overridden,
                       reason=f"{action.cohort} unpinned")
    raise LifecycleError(f"unknown edge action {action.name}")


# -- the policy ----------------------------------------------------------------------------------
def decide(status: EdgeRollout, findings: Iterable[Finding], settings: EdgeRolloutSettings,
           devices: int, now: float) -> EdgeAction | None:
    """What a rolling-out model's per-cohort findings call for: a regression in a cohort not
    pinned yet (nor unpinned by an operator during this rollout) pins it (or halts, or rolls
    back, by ``on_regression`` and the pin limit); a step
    held long enough with enough new candidate devices and no regression advances; else
    nothing (thin cohorts are inconclusive and hold nothing back, they are never acted on)."""
    if status.phase != EdgePhase.ROLLING_OUT or status.candidate is None:
        return None
    regressed = sorted({f.target for f in findings if f.verdict == REGRESSION and
                        f.version == status.candidate and f.target not in status.pinned and
                        f.target not in status.overridden})
    if regressed:
        first = next(f for f in findings if f.verdict == REGRESSION and f.target == regressed[0])
        why = f"{first.detector}: {first.reason}"
        if settings.on_regression == "rollback" or \
                len(status.pinned) + 1 > settings.max_pinned_cohorts:
            return RollbackAll(why)
        if settings.on_regression == "halt":
            return Halt(why)
        return RollbackCohort(regressed[0], why)
    if now - status.step_since >= settings.min_step_seconds and \
            devices - status.step_devices >= settings.min_devices:
        return Advance()
    return None


# -- assignment ----------------------------------------------------------------------------------
def bucket(model: str, device_hash: str) -> int:
    """The device's fixed place in 0..BUCKETS-1 for this model (sticky across steps/restarts)."""
    digest = hashlib.sha256(f"{model}\0{device_hash}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def assign(status: EdgeRollout, cohort: str, device_bucket: int) -> tuple[int | None, str]:
    """(version, why) a device of ``cohort`` in ``device_bucket`` should run."""
    if cohort in status.pinned:
        return status.pinned[cohort], f"cohort {cohort} is pinned"
    if status.candidate is not None and status.phase in (EdgePhase.ROLLING_OUT, EdgePhase.HALTED) \
            and device_bucket < status.percent * BUCKETS // 100:
        return status.candidate, f"in the {status.percent} % rollout of v{status.candidate}"
    return status.current, "current version"
