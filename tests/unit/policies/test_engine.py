from __future__ import annotations

from pathlib import Path

import pytest

from tfwarden.core.errors import ConfigError
from tfwarden.core.status import ModelStatus, Phase
from tfwarden.core.types import Finding
from tfwarden.policies.engine import PolicyMemory, evaluate, remember
from tfwarden.policies.rules import RuleSet, load_ruleset

DEFAULT = load_ruleset("default")
CANARY = ModelStatus("m", Phase.CANARY_LIVE, stable_version=1, canary_version=2, since=0.0)


def finding(detector: str, verdict: str, version: int | None = 2, pairs: int = 1000,
            severity: str = "", **effect: float) -> Finding:
    return Finding(detector, verdict, 0.0, model="m", version=version, target="v1",
                   effect=effect, evidence={"pairs": pairs}, severity=severity)


def run(findings: list[Finding], status: ModelStatus, times: list[float],
        ruleset: RuleSet = DEFAULT, memory: PolicyMemory | None = None):  # type: ignore[no-untyped-def]
    memory = memory or PolicyMemory()
    decisions = []
    for now in times:
        remember(memory, findings, now)
        decisions += evaluate(ruleset, findings, {"m": status}, now, memory)
    return decisions


def test_regressing_canary_is_rolled_back_with_its_evidence() -> None:
    (decision,) = run([finding("latency", "regression", median_ratio=2.0),
                       finding("errors", "ok")], CANARY, [100.0])
    assert decision.action == "rollback" and decision.rule == "rollback-canary-on-regression"
    assert decision.params == {"to_version": 1, "from_version": 2}
    assert decision.alert == "page" and "latency regression" in decision.reason
    assert decision.findings[0]["effect"]["median_ratio"] == 2.0


def test_inconclusive_holds_and_never_rolls_back() -> None:
    decisions = run([finding("latency", "inconclusive"), finding("errors", "ok")], CANARY,
                    [float(t) for t in range(0, 120, 5)])
    assert [d.action for d in decisions] == ["hold"]  # once, then the cooldown
    assert decisions[0].t == 30.0  # after 30 s inconclusive
    assert decisions[0].alert == "ticket"


def test_healthy_canary_steps_through_weights_with_cooldown() -> None:
    memory = PolicyMemory()
    findings = [finding("latency", "ok"), finding("errors", "ok")]
    status = CANARY
    weights = []
    actions = []
    for now in range(0, 400, 5):
        remember(memory, findings, float(now))
        for decision in evaluate(DEFAULT, findings, {"m": status}, float(now), memory):
            actions.append(decision.action)
            if decision.action == "set_weight":
                weights.append((now, decision.params["weight"]))
                status = ModelStatus("m", Phase.CANARY_LIVE, 1, 2, weight=decision.params["weight"])
    assert [w for _, w in weights] == [10, 25, 50, 100]
    assert actions[:5] == ["set_weight"] * 4 + ["promote"]  # (status stays unpromoted here)
    assert weights[0][0] == 20  # ok for 20 s first
    assert all(b[0] - a[0] >= 60 for a, b in zip(weights, weights[1:], strict=False))


def test_too_few_samples_does_not_step() -> None:
    decisions = run([finding("latency", "ok", pairs=50), finding("errors", "ok", pairs=50)],
                    CANARY, [0.0, 30.0, 60.0])
    assert decisions == []


def test_last_step_then_promotion() -> None:
    at_100 = ModelStatus("m", Phase.CANARY_LIVE, 1, 2, weight=100, since=0.0)
    decisions = run([finding("latency", "ok"), finding("errors", "ok")], at_100,
                    [0.0, 30.0, 61.0])
    assert [(d.action, d.params) for d in decisions] == [("promote", {"version": 2})]


def test_promoted_version_is_rolled_back_on_an_slo_page_within_the_hour() -> None:
    promoted = ModelStatus("m", Phase.STABLE, stable_version=2, previous_good=1, since=0.0,
                           promoted_at=0.0)
    page = finding("burn", "regression", version=None, severity="page")
    (decision,) = run([page], promoted, [600.0])
    assert decision.action == "rollback" and decision.params == {"to_version": 1, "from_version": 2}
    assert run([page], promoted, [4000.0]) == []  # promoted too long ago
    assert run([finding("burn", "regression", version=None, severity="ticket")], promoted,
               [600.0]) == []


def test_rule_guards_dry_run_approval_and_rate_limit(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("""rules:
  - name: flappy
    when:
      status: {phase: [canary_live]}
      any: [{detector: latency, verdict: regression}]
    action: rollback
    guards: {dry_run: true, require_approval: true, max_actions_per_hour: 2}
""")
    rules = load_ruleset(str(path))
    decisions = run([finding("latency", "regression")], CANARY, [0.0, 10.0, 20.0, 30.0], rules)
    assert len(decisions) == 2  # max 2 lifecycle actions per hour per model
    assert all(d.dry_run and d.needs_approval for d in decisions)


@pytest.mark.parametrize("text,message", [
    ("rules: [{name: a, when: {any: []}, action: rollback}]", "needs at least one"),
    ("rules: [{name: a, when: {status: {phase: [live]}}, action: rollback}]", "phase"),
    ("rules: [{name: a, when: {status: {phase: [stable]}}, action: explode}]", "action"),
    ("rules: [{name: a, when: {status: {phase: [stable]}}, action: set_weight}]", "params.steps"),
    ("rules: [{name: a, when: {status: {phase: [stable]}}, action: hold, colour: red}]", "colour"),
])
def test_invalid_rule_files_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_ruleset(str(path))


def test_cooldown_is_per_version_so_a_new_canary_is_judged_afresh() -> None:
    memory = PolicyMemory()
    regression = [finding("latency", "regression", version=2)]
    remember(memory, regression, 0.0)
    first = evaluate(DEFAULT, regression, {"m": CANARY}, 0.0, memory)
    assert [d.action for d in first] == ["rollback"]
    again = evaluate(DEFAULT, regression, {"m": CANARY}, 10.0, memory)
    assert again == []  # same canary: in cooldown
    next_canary = ModelStatus("m", Phase.CANARY_LIVE, stable_version=1, canary_version=3)
    regression_3 = [finding("latency", "regression", version=3)]
    remember(memory, regression_3, 20.0)
    assert [d.action for d in evaluate(DEFAULT, regression_3, {"m": next_canary}, 20.0,
                                       memory)] == ["rollback"]


def test_shadow_canary_is_promoted_after_a_healthy_replay() -> None:
    shadow = ModelStatus("m", Phase.CANARY_SHADOW, stable_version=1, canary_version=2, since=0.0)
    healthy = [finding("latency", "ok"), finding("errors", "ok")]
    decisions = run(healthy, shadow, [0.0, 60.0, 121.0])
    assert [(d.rule, d.action) for d in decisions] == [("promote-shadow-canary", "promote")]
    assert run([finding("latency", "regression")], shadow, [0.0])[0].action == "rollback"


def test_an_estimated_accuracy_drop_holds_the_canary_instead_of_stepping() -> None:
    findings = [finding("latency", "ok"), finding("errors", "ok"),
                Finding("performance", "regression", 0.0, model="m", version=2,
                        target="accuracy", evidence={"samples": 1000})]
    decisions = run(findings, CANARY, [0.0, 25.0])
    assert [(d.rule, d.action) for d in decisions] == [
        ("hold-canary-on-estimated-accuracy-drop", "hold")]
    healthy = run(findings[:2], CANARY, [0.0, 25.0])
    assert [d.action for d in healthy] == ["set_weight"]


def test_memory_a_version_swap_left_behind_raises_a_ticket() -> None:
    retention = Finding("memory_retention", "regression", 0.0, target="serving-0",
                        evidence={"samples": 100}, severity="ticket")
    stable = ModelStatus("m", Phase.STABLE, stable_version=1, since=0.0)
    decisions = run([retention], stable, [100.0, 200.0])
    assert [(d.rule, d.action, d.alert) for d in decisions] == [
        ("alert-on-memory-retention", "alert", "ticket")]  # once: the cooldown holds the second


def test_evidence_whose_samples_is_not_a_count_never_crashes_the_decisions() -> None:
    odd = Finding("memory_retention", "regression", 0.0, target="serving-0",
                  evidence={"samples": {"raw": 12}}, severity="ticket")
    rollback = finding("latency", "regression", median_ratio=2.0)
    decisions = run([odd, rollback, finding("errors", "ok")], CANARY, [100.0])
    assert "rollback" in [d.action for d in decisions]  # the other model's rules still run
