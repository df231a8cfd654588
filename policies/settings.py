"""Settings of the policies (``policies`` in the configuration)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, ValidationInfo, field_validator

from tfwarden.core.errors import ConfigError
from tfwarden.core.settings import Settings, resolve_path
from tfwarden.policies.rules import SHIPPED_RULESETS, load_ruleset


class PolicySettings(Settings):
    ruleset: str = Field(
        "default", description="A shipped rule set name or the path of a YAML rule file."
    )
    dry_run: bool = Field(False, description="Decide and journal, but do not act.")

    @field_validator("ruleset")
    @classmethod
    def _check_ruleset(cls, value: str, info: ValidationInfo) -> str:
        if value in SHIPPED_RULESETS:
            return value
        path = resolve_path(Path(value), info)
        if not path.is_file():
            raise ValueError(
                f"expected a shipped rule set ({', '.join(SHIPPED_RULESETS)}) "
                f"or an existing rule file, got {value!r}"
            )
        try:
            load_ruleset(str(path))
        except ConfigError as exc:
            raise ValueError(f"invalid rule file: {exc}") from None
        return str(path)
