"""The pure heart of the lifecycle, shared by the live runner and the policy replay.

- ``decide``: a policy decision + the model's status -> the action to carry out (None for
  decisions that do not move the model: hold, alerts, reoptimize);
- ``request``: an operator's request (pause, resume, promote, rollback) + status -> the action,
  or ``ActionRefused`` saying why it does not apply;
- ``outcome``: an action that succeeded + the status it started from -> the new status, through
  the transition table (``core.status``).
"""

from __future__ import annotations

from dataclasses import replace

from tfwarden.core.errors import ActionRefused
from tfwarden.core.status import ModelStatus, Phase, transition
from tfwarden.core.types import Decision
from tfwarden.lifecycle.actions import (
    Action,
    Pause,
    Promote,
    Resume,
    Rollback,
    SetWeight,
    StageCanary,
    UnloadPrevious,
    action_from,
)

MOVES = ("stage_canary", "set_weight", "promote", "rollback")
REQUESTS = ("rollback", "promote", "pause", "resume")


def decide(decision: Decision, status: ModelStatus) -> Action | None:
    """The action a policy decision calls for (None: it does not move the model)."""
    if decision.action not in MOVES:
        return None
    return action_from(decision.action, decision.params)


def request(name: str, status: ModelStatus) -> Action:
    """The action an operator's request calls for, or ActionRefused."""
    model = status.model
    if name == "pause":
        if status.phase == Phase.PAUSED:
            raise ActionRefused(f"model {model!r} is already paused")
        return Pause()
    if name == "resume":
        if status.phase != Phase.PAUSED or status.paused_from is None:
            raise ActionRefused(f"model {model!r} is not paused")
        return Resume()
    if name == "promote":
        if status.canary_version is None:
            raise ActionRefused(f"model {model!r} has no canary to promote")
        return Promote(status.canary_version)
    if name == "rollback":
        target = status.stable_version if status.canary_version is not None else \
            status.previous_good
        if target is None:
            raise ActionRefused(f"model {model!r} has nothing to roll back to")
        return Rollback(target)
    raise ActionRefused(f"unknown request {name!r} (expected {', '.join(REQUESTS)})")


def rolls_back_canary(status: ModelStatus) -> bool:
    """A rollback takes a canary out (else it moves a promoted stable back)."""
    return status.canary_version is not None and status.phase != Phase.STABLE


def outcome(action: Action, status: ModelStatus, now: float, *,
            shadow: bool = False) -> ModelStatus:
    """The status after ``action`` succeeded (InvalidTransition if the table forbids it).
    ``shadow``: the model's canaries get no live traffic (the shadow router)."""
    if isinstance(action, StageCanary):
        phase = Phase.CANARY_SHADOW if shadow else Phase.CANARY_LIVE
        return transition(status, phase, now, canary_version=action.version, weight=0,
                          last_error="")
    if isinstance(action, SetWeight):
        if status.canary_version is None:
            raise ActionRefused(f"model {status.model!r} has no canary to send traffic to")
        return transition(status, Phase.CANARY_LIVE, now, weight=action.weight)
    if isinstance(action, Promote):
        if status.phase == Phase.CANARY_SHADOW:  # the table goes through canary_live
            status = transition(status, Phase.CANARY_LIVE, now)
        promoting = transition(status, Phase.PROMOTING, now)
        return transition(promoting, Phase.STABLE, now, stable_version=action.version,
                          previous_good=status.stable_version, canary_version=None, weight=0,
                          promoted_at=now, last_error="")
    if isinstance(action, Rollback):
        rolling = transition(status, Phase.ROLLING_BACK, now)
        if rolls_back_canary(status):
            assert status.canary_version is not None
            return transition(rolling, Phase.ROLLED_BACK, now, canary_version=None, weight=0,
                              rejected=(*status.rejected, status.canary_version), last_error="")
        bad = status.stable_version
        return transition(rolling, Phase.STABLE, now, stable_version=rollback_target(action, status),
                          previous_good=None, promoted_at=None, last_error="",
                          rejected=(*status.rejected, bad) if bad is not None else status.rejected)
    if isinstance(action, UnloadPrevious):
        if status.phase != Phase.STABLE or status.previous_good != action.version:
            raise ActionRefused(f"model {status.model!r}: version {action.version} is not the "
                                f"previous good version of a stable model")
        return replace(status, previous_good=None)
    if isinstance(action, Pause):
        return transition(status, Phase.PAUSED, now, paused_from=status.phase)
    if isinstance(action, Resume):
        if status.paused_from is None:
            raise ActionRefused(f"model {status.model!r} is not paused")
        return transition(status, status.paused_from, now, paused_from=None)
    raise ActionRefused(f"unknown action {action.name!r}")


def rollback_target(action: Rollback, status: ModelStatus) -> int:
    """The version a rollback moves ``stable`` to."""
    if rolls_back_canary(status):
        assert status.stable_version is not None
        return status.stable_version
    target = action.to_version or status.previous_good
    if target is None:
        raise ActionRefused(f"model {status.model!r} has nothing to roll back to")
    return target
