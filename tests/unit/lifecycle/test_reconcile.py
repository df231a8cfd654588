"""The pure lifecycle core: decisions and operators' requests -> actions -> statuses."""

from __future__ import annotations

import pytest

from tfwarden.core.errors import ActionRefused, InvalidTransition
from tfwarden.core.status import ModelStatus, Phase
from tfwarden.core.types import Decision
from tfwarden.lifecycle import reconcile
from tfwarden.lifecycle.actions import (
    Pause,
    Promote,
    Resume,
    Rollback,
    SetWeight,
    StageCanary,
    action_from,
)

STABLE = ModelStatus("m", stable_version=1, since=0.0)
CANARY = ModelStatus("m", Phase.CANARY_LIVE, stable_version=1, canary_version=2, weight=25)
PROMOTED = ModelStatus("m", stable_version=2, previous_good=1, promoted_at=50.0)


def decision(action: str, **params: object) -> Decision:
    return Decision(t=0.0, rule="r", model="m", action=action, params=params, reason="")


def test_decisions_become_actions_and_the_rest_moves_nothing() -> None:
    assert reconcile.decide(decision("stage_canary", version=3), STABLE) == StageCanary(3)
    assert reconcile.decide(decision("set_weight", weight=50), CANARY) == SetWeight(50)
    assert reconcile.decide(decision("promote", version=2), CANARY) == Promote(2)
    assert reconcile.decide(decision("rollback", to_version=1, from_version=2),
                            CANARY) == Rollback(1, 2)
    for action in ("hold", "alert", "resolve_alert", "reoptimize"):
        assert reconcile.decide(decision(action), CANARY) is None
    with pytest.raises(ActionRefused, match="not valid"):
        reconcile.decide(decision("promote"), CANARY)


def test_canary_lifecycle_through_the_table() -> None:
    staged = reconcile.outcome(StageCanary(2), STABLE, 10.0)
    assert (staged.phase, staged.canary_version, staged.weight, staged.since) == \
        (Phase.CANARY_LIVE, 2, 0, 10.0)
    assert reconcile.outcome(StageCanary(2), STABLE, 10.0, shadow=True).phase == \
        Phase.CANARY_SHADOW
    stepped = reconcile.outcome(SetWeight(50), staged, 20.0)
    assert (stepped.phase, stepped.weight) == (Phase.CANARY_LIVE, 50)
    promoted = reconcile.outcome(Promote(2), stepped, 30.0)
    assert (promoted.phase, promoted.stable_version, promoted.previous_good,
            promoted.canary_version, promoted.promoted_at) == (Phase.STABLE, 2, 1, None, 30.0)


def test_a_shadow_canary_is_promoted_through_canary_live() -> None:
    shadow = ModelStatus("m", Phase.CANARY_SHADOW, stable_version=1, canary_version=2)
    promoted = reconcile.outcome(Promote(2), shadow, 5.0)
    assert (promoted.phase, promoted.stable_version) == (Phase.STABLE, 2)


def test_rollbacks_of_a_canary_and_of_a_promoted_version() -> None:
    rolled = reconcile.outcome(Rollback(1, 2), CANARY, 40.0)
    assert (rolled.phase, rolled.stable_version, rolled.canary_version, rolled.rejected) == \
        (Phase.ROLLED_BACK, 1, None, (2,))
    back = reconcile.outcome(Rollback(1, 2), PROMOTED, 60.0)
    assert (back.phase, back.stable_version, back.previous_good, back.promoted_at,
            back.rejected) == (Phase.STABLE, 1, None, None, (2,))
    assert reconcile.rollback_target(Rollback(), PROMOTED) == 1  # previous good by default
    with pytest.raises(ActionRefused, match="nothing to roll back to"):
        reconcile.rollback_target(Rollback(), STABLE)


def test_operator_requests_and_their_refusals() -> None:
    assert reconcile.request("pause", CANARY) == Pause()
    paused = reconcile.outcome(Pause(), CANARY, 1.0)
    assert (paused.phase, paused.paused_from) == (Phase.PAUSED, Phase.CANARY_LIVE)
    with pytest.raises(ActionRefused, match="already paused"):
        reconcile.request("pause", paused)
    assert reconcile.request("resume", paused) == Resume()
    resumed = reconcile.outcome(Resume(), paused, 2.0)
    assert (resumed.phase, resumed.paused_from, resumed.canary_version) == \
        (Phase.CANARY_LIVE, None, 2)
    with pytest.raises(ActionRefused, match="is not paused"):
        reconcile.request("resume", CANARY)
    assert reconcile.request("promote", CANARY) == Promote(2)
    with pytest.raises(ActionRefused, match="no canary to promote"):
        reconcile.request("promote", STABLE)
    assert reconcile.request("rollback", CANARY) == Rollback(1)
    assert reconcile.request("rollback", PROMOTED) == Rollback(1)
    with pytest.raises(ActionRefused, match="nothing to roll back to"):
        reconcile.request("rollback", STABLE)
    with pytest.raises(ActionRefused, match="unknown request"):
        reconcile.request("explode", STABLE)


def test_the_table_refuses_what_it_does_not_list() -> None:
    with pytest.raises(ActionRefused, match="no canary to send traffic to"):
        reconcile.outcome(SetWeight(10), STABLE, 0.0)
    with pytest.raises(InvalidTransition, match="cannot go from stable to promoting"):
        reconcile.outcome(Promote(2), ModelStatus("m", stable_version=1, canary_version=2), 0.0)
    rolling = ModelStatus("m", Phase.ROLLING_BACK, stable_version=1)
    with pytest.raises(InvalidTransition):
        reconcile.outcome(StageCanary(3), rolling, 0.0)


def test_actions_round_trip_through_their_journaled_form() -> None:
    for action in (StageCanary(3), SetWeight(50), Promote(2), Rollback(1, 2), Rollback(),
                   Pause(), Resume()):
        assert action_from(action.name, action.params) == action
    with pytest.raises(ActionRefused, match="unknown action"):
        action_from("explode", {})
