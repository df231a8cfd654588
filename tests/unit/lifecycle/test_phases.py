from __future__ import annotations

import pytest

from tfwarden.core.errors import InvalidTransition
from tfwarden.core.status import TRANSITIONS, ModelStatus, Phase, transition


def test_every_phase_has_a_row_and_paused_can_resume_anywhere() -> None:
    assert set(TRANSITIONS) == set(Phase)
    assert TRANSITIONS[Phase.PAUSED] == frozenset(Phase) - {Phase.PAUSED}


def test_allowed_transition_updates_fields_and_since() -> None:
    status = ModelStatus("m", stable_version=1, since=0.0)
    canary = transition(status, Phase.CANARY_LIVE, 10.0, canary_version=2, weight=10)
    assert (canary.phase, canary.canary_version, canary.weight, canary.since) == (
        Phase.CANARY_LIVE, 2, 10, 10.0)
    stepped = transition(canary, Phase.CANARY_LIVE, 20.0, weight=25)
    assert stepped.since == 10.0  # same phase: time in phase keeps counting


def test_forbidden_transition_names_the_phases() -> None:
    with pytest.raises(InvalidTransition, match="cannot go from stable to promoting"):
        transition(ModelStatus("m"), Phase.PROMOTING, 1.0)


def test_status_round_trips_through_json() -> None:
    status = ModelStatus("m", Phase.PAUSED, 1, 2, 0, 25, 5.0, 3.0, Phase.CANARY_LIVE, "x", (3,))
    assert ModelStatus.from_json(status.to_json()) == status
