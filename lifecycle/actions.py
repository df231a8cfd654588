"""Lifecycle actions as data: what to do to one model, with the parameters it needs.

Actions are journaled (``action_intent`` with their name and parameters) before they run and
kept as the pending intent, so a restarted daemon rebuilds them with :func:`action_from` and
finishes them. ``tfwarden.lifecycle.reconcile`` decides them and says what the status becomes;
``tfwarden.lifecycle.effects`` carries them out on the server and the router.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from tfwarden.core.errors import ActionRefused


@dataclass(frozen=True)
class Action:
    name: ClassVar[str] = ""

    @property
    def params(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class StageCanary(Action):
    """Load ``version`` beside stable and label it ``canary`` (live or shadow traffic)."""

    name: ClassVar[str] = "stage_canary"
    version: int


@dataclass(frozen=True)
class SetWeight(Action):
    """Send ``weight`` % of the traffic the router splits to the canary."""

    name: ClassVar[str] = "set_weight"
    weight: int


@dataclass(frozen=True)
class Promote(Action):
    """Move ``stable`` to ``version``; keep the old stable loaded for an instant rollback."""

    name: ClassVar[str] = "promote"
    version: int


@dataclass(frozen=True)
class Rollback(Action):
    """Take the canary out (back to stable), or, with no canary, move a promoted stable back
    to ``to_version`` (the previous good one)."""

    name: ClassVar[str] = "rollback"
    to_version: int | None = None
    from_version: int | None = None


@dataclass(frozen=True)
class UnloadPrevious(Action):
    """Unload ``version``, the previous good one kept loaded after a promotion for an instant
    rollback (``keep_previous_seconds`` later)."""

    name: ClassVar[str] = "unload_previous"
    version: int


@dataclass(frozen=True)
class Pause(Action):
    """Stop automation for the model until resumed (an operator's request)."""

    name: ClassVar[str] = "pause"


@dataclass(frozen=True)
class Resume(Action):
    name: ClassVar[str] = "resume"


ACTIONS: dict[str, type[Action]] = {a.name: a for a in (StageCanary, SetWeight, Promote,
                                                        Rollback, UnloadPrevious, Pause, Resume)}


def action_from(name: str, params: Mapping[str, Any]) -> Action:
    """The action ``name`` with ``params`` (as journaled); ActionRefused names what is wrong."""
    kind = ACTIONS.get(name)
    if kind is None:
        raise ActionRefused(f"unknown action {name!r} (expected one of {', '.join(ACTIONS)})")
    try:
        if kind is StageCanary:
            return StageCanary(int(params["version"]))
        if kind is SetWeight:
            return SetWeight(int(params["weight"]))
        if kind is Promote:
            return Promote(int(params["version"]))
        if kind is UnloadPrevious:
            return UnloadPrevious(int(params["version"]))
        if kind is Rollback:
            return Rollback(_int(params.get("to_version")), _int(params.get("from_version")))
    except (KeyError, TypeError, ValueError) as exc:
        raise ActionRefused(f"{name}: parameters {dict(params)} are not valid ({exc})") from None
    return kind()


def _int(value: Any) -> int | None:
    return None if value is None else int(value)
