"""Replaying policies in ``tfwarden backtest``: decisions a configuration would have taken.

The trace's deploys set each model's phase (a canary deploy starts ``canary_live`` at weight 0);
the policy engine is evaluated once per second of trace time on the current findings, and its
lifecycle decisions are applied to the simulated status (a rollback removes the canary, a
promotion makes it stable, set_weight moves the weight) so the replay follows its own decisions.
Nothing is acted on: every decision is a dry run.
"""

from __future__ import annotations

from dataclasses import replace

from tfwarden.core.status import ModelStatus, Phase, transition
from tfwarden.core.types import Decision, Finding
from tfwarden.policies.engine import PolicyMemory, evaluate, remember
from tfwarden.policies.rules import RuleSet

EVALUATE_EVERY_SECONDS = 1.0


class PolicyReplay:
    def __init__(self, ruleset: RuleSet) -> None:
        self.ruleset = ruleset
        self.memory = PolicyMemory()
        self.statuses: dict[str, ModelStatus] = {}
        self.next_t: float | None = None
        self.decided = 0

    def follow_roles(self, roles: dict[str, tuple[int | None, int | None]], now: float) -> None:
        """Mirror the trace's deploys into the simulated statuses."""
        for model, (stable, canary) in roles.items():
            status = self.statuses.get(model) or ModelStatus(model, stable_version=stable, since=now)
            if canary is not None and canary != status.canary_version and \
                    status.phase != Phase.CANARY_LIVE and canary not in (status.stable_version,):
                if status.phase in (Phase.ROLLED_BACK, Phase.STABLE):
                    status = transition(status, Phase.CANARY_LIVE, now, canary_version=canary,
                                        weight=0)
            if canary is None and stable is not None and stable != status.stable_version and \
                    status.phase in (Phase.STABLE, Phase.ROLLED_BACK, Phase.CANARY_LIVE):
                status = replace(status, phase=Phase.STABLE, stable_version=stable,
                                 canary_version=None, weight=0, since=now)
            self.statuses[model] = status

    def step(self, findings: list[Finding], now: float) -> list[Decision]:
        if self.next_t is not None and now < self.next_t:
            return []
        self.next_t = now + EVALUATE_EVERY_SECONDS
        remember(self.memory, findings, now)
        decisions = evaluate(self.ruleset, findings, self.statuses, now, self.memory,
                             dry_run=True)
        for decision in decisions:
            self._apply(decision, now)
        self.decided += len(decisions)
        return decisions

    def _apply(self, decision: Decision, now: float) -> None:
        status = self.statuses[decision.model]
        if decision.action == "set_weight":
            self.statuses[decision.model] = transition(status, Phase.CANARY_LIVE, now,
                                                       weight=int(decision.params["weight"]))
        elif decision.action == "promote":
            promoting = transition(status, Phase.PROMOTING, now)
            self.statuses[decision.model] = transition(
                promoting, Phase.STABLE, now, stable_version=status.canary_version,
                previous_good=status.stable_version, canary_version=None, weight=0,
                promoted_at=now)
        elif decision.action == "rollback":
            rolling = transition(status, Phase.ROLLING_BACK, now)
            if status.phase == Phase.STABLE:  # a promoted version goes back to the previous one
                self.statuses[decision.model] = transition(
                    rolling, Phase.STABLE, now, stable_version=status.previous_good,
                    previous_good=None, promoted_at=None)
            else:
                self.statuses[decision.model] = transition(
                    rolling, Phase.ROLLED_BACK, now, canary_version=None, weight=0)
