"""Alerts received from Alertmanager become findings; malformed ones are ignored, not errors."""

from __future__ import annotations

from tests.unit.detectors.test_roster import roster
from tfwarden.detectors.alerts import ReceiveRule, receive

RULES = [ReceiveRule(alertname="TFServingErrorBudgetBurn", detector="burn")]


def test_a_firing_alert_named_by_a_rule_becomes_a_regression_finding() -> None:
    r = roster()
    firing = {"status": "firing", "labels": {"alertname": "TFServingErrorBudgetBurn",
                                             "model_name": "m", "severity": "page"},
              "annotations": {"summary": "burning 14x"}}
    assert receive(RULES, [firing], r, r.clock.now()) == {"accepted": 1, "ignored": 0}
    (finding,) = [f for f in r.findings() if f.detector == "burn"]
    assert (finding.model, finding.verdict, finding.severity, finding.reason) == \
        ("m", "regression", "page", "burning 14x")


def test_malformed_and_unknown_alerts_are_ignored() -> None:
    r = roster()
    alerts = ["not an alert", {"labels": "x"}, {"labels": ["a"]}, {"status": "firing"},
              {"labels": {"alertname": "Other"}},
              {"labels": {"alertname": "TFServingErrorBudgetBurn", "model_name": 7},
               "annotations": "x"}]
    assert receive(RULES, alerts, r, r.clock.now()) == {"accepted": 1, "ignored": 5}
    (finding,) = [f for f in r.findings() if f.detector == "burn"]
    assert finding.model == "7" and finding.verdict == "ok" and finding.reason == ""
