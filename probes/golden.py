"""Golden requests: JSONL, one predict request per line with the outputs it must produce.

    {"request": {"instances": [1.0, 2.0]}, "expected": {"predictions": [2.5, 3.0]}, "tolerance": 1e-6}

``request`` is a TF Serving REST predict body; ``expected`` (optional) is compared with the
response body, numbers within ``tolerance`` (absolute, default 1e-6).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tfwarden.core.errors import ConfigError, ConfigProblem


class GoldenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    request: dict[str, Any]
    expected: dict[str, Any] | None = None
    tolerance: float = Field(1e-6, ge=0)


DEFAULT_GOLDEN = (GoldenRequest(request={"instances": [1.0]}),)


def load_golden(path: Path) -> tuple[GoldenRequest, ...]:
    """Read a golden JSONL file; ConfigError names the file and line of each bad entry."""
    problems: list[ConfigProblem] = []
    requests: list[GoldenRequest] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(str(path), [ConfigProblem("", f"cannot read: {exc.strerror}")]) from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            requests.append(GoldenRequest.model_validate(json.loads(line)))
        except json.JSONDecodeError as exc:
            problems.append(ConfigProblem("", f"invalid JSON: {exc.msg}", number))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            problems.append(ConfigProblem(where, first["msg"], number))
    if not requests and not problems:
        problems.append(ConfigProblem("", "no golden requests in file"))
    if problems:
        raise ConfigError(str(path), problems)
    return tuple(requests)


def matches(expected: Any, actual: Any, tolerance: float) -> bool:
    """Deep comparison of JSON values with an absolute tolerance on numbers."""
    if isinstance(expected, bool) or isinstance(actual, bool):
        return type(expected) is type(actual) and expected == actual
    if isinstance(expected, int | float) and isinstance(actual, int | float):
        if math.isnan(expected) or math.isnan(actual):
            return math.isnan(expected) and math.isnan(actual)
        return abs(expected - actual) <= tolerance
    if isinstance(expected, list) and isinstance(actual, list):
        return len(expected) == len(actual) and all(
            matches(e, a, tolerance) for e, a in zip(expected, actual, strict=True))
    if isinstance(expected, dict) and isinstance(actual, dict):
        return expected.keys() == actual.keys() and all(
            matches(expected[k], actual[k], tolerance) for k in expected)
    return bool(expected == actual)
