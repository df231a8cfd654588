"""Alerts received from Alertmanager's webhook become findings (``alerting.receive``).

A firing alert named by a receive rule is a ``regression`` finding of the rule's detector for
the model its ``model_label`` names (a resolved one an ``ok`` finding), valid for
``expire_seconds`` unless sent again: this is how a burn-rate page computed by Prometheus over
all clients reaches the policies (``rollback-recently-promoted-on-slo-page``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field

from tfwarden.core.settings import Settings
from tfwarden.core.types import OK, REGRESSION, Finding
from tfwarden.detectors.roster import Roster


class ReceiveRule(Settings):
    """Turns an alert received from Alertmanager's webhook into a finding."""

    alertname: str
    detector: Literal["latency", "errors", "burn", "memory", "drift"] = "burn"
    model_label: str = Field("model_name", description="Alert label naming the model.")
    expire_seconds: float = Field(900.0, gt=0, description="Forget a firing alert not re-sent.")


def receive(rules: Sequence[ReceiveRule], alerts: Sequence[Any], roster: Roster,
            now: float) -> dict[str, int]:
    """Findings for the alerts a rule names; counts of accepted and ignored alerts."""
    by_name = {r.alertname: r for r in rules}
    accepted = ignored = 0
    for alert in alerts:
        labels = alert.get("labels") if isinstance(alert, dict) else None
        if not isinstance(labels, dict):
            ignored += 1
            continue
        labels = {str(k): str(v) for k, v in labels.items()}
        rule = by_name.get(labels.get("alertname", ""))
        if rule is None:
            ignored += 1
            continue
        firing = alert.get("status") == "firing"
        annotations = alert.get("annotations")
        summary = annotations.get("summary", "") if isinstance(annotations, dict) else ""
        finding = Finding(rule.detector, REGRESSION if firing else OK, now,
                          model=labels.get(rule.model_label, ""), version=None,
                          target=f"alertmanager:{rule.alertname}",
                          severity=labels.get("severity", "") if firing else "",
                          reason=str(summary)[:300],
                          evidence={"alertname": rule.alertname, "labels": labels})
        identity = ",".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "severity")
        roster.add_external(finding, now + rule.expire_seconds, identity)
        accepted += 1
    return {"accepted": accepted, "ignored": ignored}
