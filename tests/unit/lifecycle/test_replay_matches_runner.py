"""The same decisions through the live runner (on fakes) and through the backtest's policy
replay leave the same phases: both go through ``lifecycle.reconcile``."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.unit.lifecycle.test_runner import Harness
from tfwarden.core.status import ModelStatus
from tfwarden.core.types import Decision
from tfwarden.lifecycle.replay import PolicyReplay
from tfwarden.policies.rules import load_ruleset


def decision(t: float, action: str, **params: object) -> Decision:
    return Decision(t=t, rule=f"rule-{action}", model="m", action=action, params=params,
                    reason="test")


SCRIPT = [  # a canary stepped and promoted; a later canary rolled back; a promotion undone
    decision(10, "set_weight", weight=50),
    decision(20, "set_weight", weight=100),
    decision(30, "promote", version=2),
    decision(40, "stage_canary", version=3),
    decision(50, "set_weight", weight=25),
    decision(60, "rollback", to_version=2, from_version=3),
    decision(70, "hold"),
    decision(80, "stage_canary", version=4),
    decision(90, "promote", version=4),
    decision(100, "rollback", to_version=2, from_version=4),
]


def shape(status: ModelStatus) -> tuple[object, ...]:
    return (status.phase, status.stable_version, status.canary_version, status.weight,
            status.previous_good, status.rejected)


def test_live_runner_and_replay_end_in_the_same_phases(tmp_path: Path) -> None:
    live = Harness(tmp_path)
    live.server.model_labels = {"stable": 1, "canary": 2}
    for version in (3, 4):
        live.server.add_version_dir(version)
    replay = PolicyReplay(load_ruleset("default"))
    replay.follow_roles({"m": (1, 2)}, 0.0)
    live_shapes, replay_shapes = [], []

    async def scenario() -> None:
        await live.runner.start()
        assert shape(live.status) == shape(replay.statuses["m"])
        for step in SCRIPT:
            live.clock.set(step.t)
            live.runner.handle(step)
            await live.runner.settle()
            replay.apply(step, step.t)
            live_shapes.append(shape(live.status))
            replay_shapes.append(shape(replay.statuses["m"]))

    asyncio.run(scenario())
    assert live_shapes == replay_shapes
    assert live.status.last_error == ""  # every step was carried out, none failed
    assert len(set(live_shapes)) >= 8  # the script really moved the model around
