"""The rule format (YAML, validated strictly; docs/policies.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tfwarden.core.errors import ConfigError, ConfigProblem

LIFECYCLE_ACTIONS = ("stage_canary", "set_weight", "promote", "rollback", "hold")
ACTIONS = (*LIFECYCLE_ACTIONS, "alert", "resolve_alert", "reoptimize")
RULESETS = Path(__file__).parent / "rulesets"
SHIPPED_RULESETS = tuple(sorted(p.stem for p in RULESETS.glob("*.yaml")))

Action = Literal["stage_canary", "set_weight", "promote", "rollback", "hold", "alert",
                 "resolve_alert", "reoptimize"]
PhaseName = Literal["stable", "canary_shadow", "canary_live", "promoting", "rolling_back",
                    "rolled_back", "paused"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FindingCondition(_Strict):
    """Matches when the current finding of a detector for the model's ``role`` version says so.

    ``detector`` is one of latency, errors, burn, memory, drift, or performance (accuracy
    estimated without labels, target ``accuracy``; docs/performance.md).
    """

    detector: Literal["latency", "errors", "burn", "memory", "memory_retention", "drift",
                      "performance"]
    verdict: Literal["ok", "regression", "inconclusive"]
    role: Literal["canary", "stable", "any"] = "canary"
    target: list[str] | None = Field(
        None, description="finding targets to match, e.g. drift's inputs/outputs/disagreement")
    severity: list[Literal["page", "ticket", "info", ""]] | None = None
    min_effect: dict[str, float] = Field({}, description="effect key -> minimum value")
    min_samples: int = Field(0, ge=0, description="evidence pairs/samples at least")
    for_seconds: float = Field(0, ge=0, description="verdict held at least this long")
    consecutive: int = Field(1, ge=1, description="consecutive evaluations with this verdict")


class StatusCondition(_Strict):
    phase: list[PhaseName] = []
    weight_below: int | None = Field(None, ge=1, le=101)
    weight_at_least: int | None = Field(None, ge=0, le=100)
    promoted_within_seconds: float | None = Field(None, gt=0)
    in_phase_for_seconds: float = Field(0, ge=0)


class When(_Strict):
    status: StatusCondition = StatusCondition()
    all: list[FindingCondition] = []
    any: list[FindingCondition] = []

    @model_validator(mode="after")
    def _something(self) -> When:
        if not self.all and not self.any and not self.status.phase:
            raise ValueError("a rule needs at least one finding condition or a phase")
        return self


class Guards(_Strict):
    cooldown_seconds: float = Field(0, ge=0)
    max_actions_per_hour: int = Field(10, ge=1)
    require_approval: bool = False
    dry_run: bool = False


class Rule(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    when: When
    action: Action
    params: dict[str, float | int | str | list[int]] = {}
    alert: Literal["page", "ticket", "info"] | None = Field(
        None, description="also raise an alert of this severity when the rule fires")
    guards: Guards = Guards()

    @model_validator(mode="after")
    def _params(self) -> Rule:
        if self.action == "reoptimize" and not isinstance(self.params.get("method", ""), str):
            raise ValueError("reoptimize takes params.method: an optimization method name")
        if self.action == "set_weight":
            steps = self.params.get("steps")
            if not isinstance(steps, list) or not steps or sorted(steps) != steps or \
                    not all(0 < s <= 100 for s in steps):
                raise ValueError("set_weight needs params.steps: increasing weights in 1..100")
        return self


class RuleSet(_Strict):
    rules: list[Rule]

    @model_validator(mode="after")
    def _unique(self) -> RuleSet:
        names = [r.name for r in self.rules]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate rule names: {', '.join(duplicates)}")
        return self


def load_ruleset(name_or_path: str) -> RuleSet:
    """A shipped rule set by name (``default``) or a YAML rule file; ConfigError on problems."""
    path = RULESETS / f"{name_or_path}.yaml" if "/" not in name_or_path and not \
        name_or_path.endswith((".yaml", ".yml")) else Path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(str(path), [ConfigProblem("", f"cannot read: {exc.strerror}")]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), [ConfigProblem("", f"invalid YAML: {exc}")]) from None
    try:
        return RuleSet.model_validate(data)
    except ValidationError as exc:
        problems = [ConfigProblem(".".join(str(p) for p in e["loc"]), e["msg"]) for e in exc.errors()]
        raise ConfigError(str(path), problems) from None
