"""A rule may name the performance detector (estimated accuracy) and acts on its findings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tfwarden.core.errors import ConfigError
from tfwarden.core.status import ModelStatus, Phase
from tfwarden.core.types import Decision
from tfwarden.detectors.performance_settings import PerformanceSettings, performance_finding
from tfwarden.policies.engine import PolicyMemory, evaluate, remember
from tfwarden.policies.rules import RuleSet, load_ruleset

CANARY = ModelStatus("m", Phase.CANARY_LIVE, stable_version=1, canary_version=2, since=0.0)
RULES = """rules:
  - name: rollback-canary-on-accuracy-drop
    when:
      status: {phase: [canary_shadow, canary_live]}
      any:
        - {detector: performance, verdict: regression, role: canary, target: [accuracy],
           min_samples: 200, min_effect: {accuracy_drop: 0.05}}
    action: rollback
    alert: page
  - name: hold-canary-while-accuracy-unknown
    when:
      status: {phase: [canary_live]}
      any: [{detector: performance, verdict: inconclusive, role: canary}]
    action: hold
"""


@pytest.fixture
def rules(tmp_path: Path) -> RuleSet:
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    return load_ruleset(str(path))


def estimate(accuracy: float, half_width: float, rows: int = 1000) -> dict[str, Any]:
    return {"estimated_accuracy": accuracy, "ci_low": accuracy - half_width,
            "ci_high": accuracy + half_width, "rows": rows, "reference_accuracy": 0.9,
            "calibrated": True}


def decide(rules: RuleSet, report: dict[str, Any], version: int = 2) -> list[Decision]:
    finding = performance_finding("m", version, report, PerformanceSettings(), 0.0)
    memory = PolicyMemory()
    remember(memory, [finding], 100.0)
    return evaluate(rules, [finding], {"m": CANARY}, 100.0, memory)


def test_canary_with_an_estimated_accuracy_drop_is_rolled_back(rules: RuleSet) -> None:
    (decision,) = decide(rules, estimate(0.75, 0.03))
    assert decision.action == "rollback" and decision.params == {"to_version": 1, "from_version": 2}
    assert decision.alert == "page" and "performance regression" in decision.reason
    (evidence,) = decision.findings
    assert evidence["evidence"]["reference_accuracy"] == 0.9
    assert evidence["effect"]["estimated_accuracy_ci"] == [0.72, 0.78]


def test_unclear_estimate_holds_and_healthy_or_stable_findings_do_nothing(rules: RuleSet) -> None:
    assert [d.action for d in decide(rules, estimate(0.85, 0.03))] == ["hold"]  # straddles
    assert [d.action for d in decide(rules, estimate(0.70, 0.03, rows=50))] == ["hold"]
    assert decide(rules, estimate(0.90, 0.02)) == []  # ok
    assert decide(rules, estimate(0.75, 0.03), version=1) == []  # stable's, not the canary's


def test_unknown_detector_is_still_refused(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(RULES.replace("detector: performance, verdict: regression",
                                  "detector: accuracy, verdict: regression"))
    with pytest.raises(ConfigError, match="performance"):
        load_ruleset(str(path))
