"""``evaluate(ruleset, findings, statuses, now, memory) -> decisions``: deterministic rules.

The engine remembers, between evaluations, how long each finding has held its verdict and how
many evaluations in a row (for ``for_seconds`` / ``consecutive``), and when each rule last fired
(cooldowns, actions per hour); that memory is explicit (``PolicyMemory``) so backtests replay it
exactly. Per model at most one lifecycle action (stage_canary, set_weight, promote, rollback,
hold) is decided per evaluation: the first matching rule wins, so rule order is priority. Alert
actions and each rule's ``alert`` are not limited.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tfwarden.core.status import ModelStatus
from tfwarden.core.types import Decision, Finding
from tfwarden.policies.rules import LIFECYCLE_ACTIONS, FindingCondition, Rule, RuleSet

FindingKey = tuple[str, str, int | None, str]


@dataclass
class _Held:
    verdict: str
    since: float
    consecutive: int


@dataclass
class PolicyMemory:
    held: dict[FindingKey, _Held] = field(default_factory=dict)
    # (rule, model, version the decision is about) -> time: a new canary is a new situation
    last_fired: dict[tuple[str, str, int | None], float] = field(default_factory=dict)
    actions: dict[str, deque[float]] = field(default_factory=dict)


def _key(finding: Finding) -> FindingKey:
    return (finding.detector, finding.model, finding.version, finding.target)


def remember(memory: PolicyMemory, findings: Sequence[Finding], now: float) -> None:
    """Fold the latest findings into the verdict history (call once per evaluation)."""
    for finding in findings:
        key = _key(finding)
        held = memory.held.get(key)
        if held is None or held.verdict != finding.verdict:
            memory.held[key] = _Held(finding.verdict, now, 1)
        else:
            held.consecutive += 1


def _role_version(status: ModelStatus, role: str) -> int | None:
    return status.canary_version if role == "canary" else status.stable_version


def _matches(condition: FindingCondition, finding: Finding, status: ModelStatus,
             memory: PolicyMemory, now: float) -> bool:
    if finding.detector != condition.detector or finding.verdict != condition.verdict:
        return False
    if finding.model not in (status.model, ""):
        return False
    if condition.role != "any" and finding.version != _role_version(status, condition.role):
        return False
    if condition.severity is not None and finding.severity not in condition.severity:
        return False
    if condition.target is not None and finding.target not in condition.target:
        return False
    for name, minimum in condition.min_effect.items():
        value = finding.effect.get(name)
        if not isinstance(value, int | float) or value < minimum:
            return False
    evidence = finding.evidence
    samples = evidence.get("pairs", evidence.get("samples", evidence.get("bins", 0)))
    if not isinstance(samples, int | float) or isinstance(samples, bool):
        samples = 0  # a detector's evidence that is not a count never crashes the decisions
    if samples < condition.min_samples:
        return False
    held = memory.held.get(_key(finding))
    if held is None or held.verdict != finding.verdict:
        return condition.for_seconds == 0 and condition.consecutive <= 1
    return now - held.since >= condition.for_seconds and held.consecutive >= condition.consecutive


def _status_ok(rule: Rule, status: ModelStatus, now: float) -> bool:
    s = rule.when.status
    if s.phase and status.phase.value not in s.phase:
        return False
    if s.weight_below is not None and status.weight >= s.weight_below:
        return False
    if s.weight_at_least is not None and status.weight < s.weight_at_least:
        return False
    if s.promoted_within_seconds is not None and (
            status.promoted_at is None or now - status.promoted_at > s.promoted_within_seconds):
        return False
    return now - status.since >= s.in_phase_for_seconds


def _justification(rule: Rule, findings: Sequence[Finding], status: ModelStatus,
                   memory: PolicyMemory, now: float) -> list[Finding] | None:
    """The findings that make the rule's conditions true, or None."""
    used: list[Finding] = []
    for condition in rule.when.all:
        match = next((f for f in findings if _matches(condition, f, status, memory, now)), None)
        if match is None:
            return None
        used.append(match)
    if rule.when.any:
        matches = [f for c in rule.when.any for f in findings
                   if _matches(c, f, status, memory, now)]
        if not matches:
            return None
        used += [m for m in matches if m not in used]
    return used


def _params(rule: Rule, status: ModelStatus) -> dict[str, Any] | None:
    if rule.action == "set_weight":
        steps = rule.params["steps"]
        assert isinstance(steps, list)
        following = [w for w in steps if w > status.weight]
        return {"weight": following[0]} if following else None
    if rule.action == "rollback":
        return {"to_version": status.previous_good if status.phase.value == "stable"
                else status.stable_version, "from_version": status.canary_version
                if status.phase.value != "stable" else status.stable_version}
    if rule.action == "promote":
        return {"version": status.canary_version}
    return dict(rule.params)


def evaluate(ruleset: RuleSet, findings: Sequence[Finding], statuses: Mapping[str, ModelStatus],
             now: float, memory: PolicyMemory, dry_run: bool = False) -> list[Decision]:
    """Decisions for every model, deterministic in (rules, findings, statuses, now, memory)."""
    decisions: list[Decision] = []
    for model, status in sorted(statuses.items()):
        lifecycle_decided = False
        recent = memory.actions.setdefault(model, deque())
        while recent and recent[0] <= now - 3600:
            recent.popleft()
        for rule in ruleset.rules:
            is_lifecycle = rule.action in LIFECYCLE_ACTIONS
            if (is_lifecycle and lifecycle_decided) or not _status_ok(rule, status, now):
                continue
            used = _justification(rule, findings, status, memory, now)
            if used is None:
                continue
            if is_lifecycle:
                lifecycle_decided = True  # a matching rule blocks lower ones, even in cooldown
            subject = status.canary_version if status.canary_version is not None \
                else status.stable_version
            last = memory.last_fired.get((rule.name, model, subject))
            if last is not None and now - last < rule.guards.cooldown_seconds:
                continue
            if is_lifecycle and len(recent) >= rule.guards.max_actions_per_hour:
                continue
            params = _params(rule, status)
            if params is None:
                continue
            memory.last_fired[(rule.name, model, subject)] = now
            if is_lifecycle:
                recent.append(now)
            reason = "; ".join(f"{f.detector} {f.verdict}"
                               f"{' v' + str(f.version) if f.version is not None else ''}"
                               f"{': ' + f.reason if f.reason else ''}" for f in used)
            decisions.append(Decision(
                t=now, rule=rule.name, model=model, action=rule.action, params=params,
                reason=reason or f"phase {status.phase.value}",
                findings=tuple(f.to_json() for f in used), alert=rule.alert,
                dry_run=dry_run or rule.guards.dry_run,
                needs_approval=rule.guards.require_approval))
    return decisions


class PolicyEngine:
    """The rule set with its memory (``core.ports.Policy``): ``decide`` folds the findings into
    the verdict history and evaluates; ``reconfigure`` swaps the rules and keeps the memory
    (cooldowns, hourly counts, ``for`` timers)."""

    def __init__(self, ruleset: RuleSet, dry_run: bool = False) -> None:
        self.ruleset, self.dry_run = ruleset, dry_run
        self.memory = PolicyMemory()

    def reconfigure(self, ruleset: RuleSet, dry_run: bool) -> None:
        self.ruleset, self.dry_run = ruleset, dry_run

    def decide(self, findings: Sequence[Finding], statuses: Mapping[str, ModelStatus],
               now: float) -> list[Decision]:
        remember(self.memory, findings, now)
        return evaluate(self.ruleset, findings, statuses, now, self.memory, self.dry_run)
