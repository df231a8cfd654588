"""Canary-vs-stable prediction disagreement on the same inputs: a label-free canary gate.

Both versions answer the same mirrored inputs. A row disagrees when the top class differs
(outputs wider than one value, read as scores) or when a single output differs by more than
``atol + rtol * |stable|``. The verdict uses the Wilson interval of the disagreement rate:
``regression`` when its lower bound is above the threshold, ``ok`` when its upper bound is below,
``inconclusive`` in between or under ``min_rows``.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from tfwarden.core.settings import Settings
from tfwarden.core.types import INCONCLUSIVE, OK, REGRESSION, Finding
from tfwarden.detectors.base import wilson


class DisagreementSettings(Settings):
    """When canary and stable disagree (``drift.outputs`` in the configuration)."""

    disagreement_threshold: float = Field(0.05, gt=0, lt=1)
    min_rows: int = Field(200, ge=10)
    atol: float = Field(1e-3, ge=0)
    rtol: float = Field(1e-2, ge=0)


def disagrees(stable: Sequence[float | str], canary: Sequence[float | str],
              settings: DisagreementSettings) -> bool:
    if len(stable) != len(canary):
        return True
    if len(stable) > 1 and all(isinstance(v, float) for v in (*stable, *canary)):
        top_stable = max(range(len(stable)), key=lambda i: float(stable[i]))
        return top_stable != max(range(len(canary)), key=lambda i: float(canary[i]))
    for a, b in zip(stable, canary, strict=True):
        if isinstance(a, str) or isinstance(b, str):
            if a != b:
                return True
        elif abs(float(a) - float(b)) > settings.atol + settings.rtol * abs(float(a)):
            return True
    return False


class Disagreement:
    def __init__(self, model: str, stable: int, canary: int,
                 settings: DisagreementSettings) -> None:
        self.model, self.stable, self.canary, self.settings = model, stable, canary, settings
        self.rows = 0
        self.disagreeing = 0

    def add(self, stable_rows: Sequence[Sequence[float | str]],
            canary_rows: Sequence[Sequence[float | str]]) -> None:
        for a, b in zip(stable_rows, canary_rows, strict=True):
            self.rows += 1
            self.disagreeing += disagrees(a, b, self.settings)

    def evaluate(self, now: float) -> Finding:
        s = self.settings
        low, high = wilson(self.disagreeing, self.rows)
        rate = self.disagreeing / self.rows if self.rows else 0.0
        if self.rows < s.min_rows:
            verdict, reason = INCONCLUSIVE, f"{self.rows} of {s.min_rows} rows compared"
        elif low > s.disagreement_threshold:
            verdict, reason = REGRESSION, (f"v{self.canary} disagrees with v{self.stable} on "
                                           f"{rate:.1%} of rows (95% CI {low:.1%}-{high:.1%}, "
                                           f"threshold {s.disagreement_threshold:.1%})")
        elif high < s.disagreement_threshold:
            verdict, reason = OK, f"disagreement {rate:.1%} (95% CI up to {high:.1%})"
        else:
            verdict, reason = INCONCLUSIVE, (f"disagreement {rate:.1%}, CI {low:.1%}-{high:.1%} "
                                             f"straddles {s.disagreement_threshold:.1%}")
        return Finding("drift", verdict, now, model=self.model, version=self.canary,
                       target="disagreement", reason=reason,
                       effect={"disagreement": round(rate, 6), "ci_low": round(low, 6) if
                               self.rows else 0.0, "ci_high": round(high, 6) if self.rows else 1.0},
                       evidence={"statistic": "disagreement_ci_low" if verdict == REGRESSION
                                 else "disagreement_ci_high", "value": round(low if verdict ==
                                 REGRESSION else high, 6) if self.rows else None,
                                 "threshold": s.disagreement_threshold,
                                 "samples": self.rows, "disagreeing": self.disagreeing,
                                 "stable_version": self.stable})
