"""The validation gate: is the candidate still the same model? (pure; metrics from the worker)

A candidate passes when every configured tolerance holds on the golden set: top-1 agreement with
the source (classifiers), maximum and mean absolute output error, and the task metric when the
golden set has labels (accuracy drop in points, or MAE increase). Latency and size are reported
next to the source's; ``max_latency_ratio`` (off by default) can also reject a slower candidate.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from tfwarden.core.settings import Settings


class Tolerances(Settings):
    """What a candidate may differ from its source on the golden set."""

    min_top1_agreement: float = Field(0.97, ge=0, le=1)
    max_accuracy_drop_points: float = Field(1.0, ge=0)
    max_abs_error: float | None = Field(
        None, gt=0, description="Default: not checked for classifiers, 0.05 otherwise.")
    max_mean_abs_error: float | None = Field(None, gt=0)
    max_mae_increase: float = Field(0.05, ge=0)
    max_latency_ratio: float | None = Field(None, gt=0, description="Off by default.")


def judge(agreement: dict[str, Any], tolerances: Tolerances) -> list[str]:
    """The reasons the candidate is rejected (empty: it passes)."""
    reasons = []
    t = tolerances
    classifier = "top1_agreement" in agreement
    if classifier and agreement["top1_agreement"] < t.min_top1_agreement:
        reasons.append(f"top-1 agreement {agreement['top1_agreement']:.3f} < "
                       f"{t.min_top1_agreement}")
    if "candidate_accuracy" in agreement:
        drop = 100 * (agreement["source_accuracy"] - agreement["candidate_accuracy"])
        if drop > t.max_accuracy_drop_points:
            reasons.append(f"accuracy {100 * agreement['candidate_accuracy']:.1f} % is "
                           f"{drop:.1f} points below the source's "
                           f"{100 * agreement['source_accuracy']:.1f} % (max "
                           f"{t.max_accuracy_drop_points})")
    if "candidate_mae" in agreement:
        increase = agreement["candidate_mae"] - agreement["source_mae"]
        if increase > t.max_mae_increase:
            reasons.append(f"MAE {agreement['candidate_mae']:.4f} is {increase:.4f} above the "
                           f"source's (max {t.max_mae_increase})")
    max_abs = t.max_abs_error if t.max_abs_error is not None else (None if classifier else 0.05)
    if max_abs is not None and agreement["max_abs_error"] > max_abs:
        reasons.append(f"max abs output error {agreement['max_abs_error']:.4g} > {max_abs}")
    if t.max_mean_abs_error is not None and agreement["mean_abs_error"] > t.max_mean_abs_error:
        reasons.append(f"mean abs output error {agreement['mean_abs_error']:.4g} > "
                       f"{t.max_mean_abs_error}")
    return reasons


def latency_reasons(source: dict[str, float], candidate: dict[str, float],
                    tolerances: Tolerances) -> list[str]:
    limit = tolerances.max_latency_ratio
    if limit is None or not source.get("p50_ms"):
        return []
    ratio = candidate["p50_ms"] / source["p50_ms"]
    return [f"p50 latency {ratio:.2f}x the source's (max {limit:g}x)"] if ratio > limit else []
