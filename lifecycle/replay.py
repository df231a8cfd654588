"""Replaying policies in ``tfwarden backtest``: the decisions a configuration would have taken.

The trace's deploys (through the detectors' role tracker) set each model's phase: a canary
deploy starts ``canary_live`` at weight 0. The policy is evaluated once per second of trace time
on the current findings, and its lifecycle decisions change the simulated status through the
same ``reconcile`` the live runner uses, so the replay follows its own decisions. Nothing is
acted on: every decision is a dry run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from tfwarden.core.errors import LifecycleError
from tfwarden.core.status import ModelStatus, Phase, transition
from tfwarden.core.types import Decision, Finding, RolePair
from tfwarden.lifecycle import reconcile
from tfwarden.policies.engine import PolicyEngine
from tfwarden.policies.rules import RuleSet

EVALUATE_EVERY_SECONDS = 1.0


class PolicyReplay:
    def __init__(self, ruleset: RuleSet) -> None:
        self.policy = PolicyEngine(ruleset, dry_run=True)
        self.statuses: dict[str, ModelStatus] = {}
        self.next_t: float | None = None
        self.decided = 0

    def follow_roles(self, roles: Mapping[str, RolePair], now: float) -> None:
        """Mirror the trace's deploys into the simulated statuses."""
        for model, (stable, canary) in roles.items():
            status = self.statuses.get(model) or ModelStatus(model, stable_version=stable, since=now)
            if canary is not None and canary != status.canary_version and \
                    status.phase in (Phase.ROLLED_BACK, Phase.STABLE) and \
                    canary != status.stable_version:
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
        decisions = self.policy.decide(findings, self.statuses, now)
        for decision in decisions:
            self.apply(decision, now)
        self.decided += len(decisions)
        return decisions

    def apply(self, decision: Decision, now: float) -> None:
        """The status after ``decision`` as the live runner would leave it."""
        status = self.statuses[decision.model]
        try:
            action = reconcile.decide(decision, status)
            if action is not None:
                self.statuses[decision.model] = reconcile.outcome(action, status, now)
        except LifecycleError:
            pass  # the live runner would journal it as failed and leave the status
