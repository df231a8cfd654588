"""The base of every settings type, and the validators they share.

Each stage defines its settings next to its code (``LatencySettings`` in
``detectors.latency``, ``LifecycleSettings`` in ``lifecycle.settings``...), as pydantic models
that forbid unknown fields and are frozen; the configuration file (``daemon.config``) is built
from them, so each default is written once. Relative paths are resolved against the directory
of the configuration file (the ``base_dir`` in the validation context).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo

NAME = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"
Name = Annotated[str, Field(pattern=NAME, max_length=200)]


class Settings(BaseModel):
    """Frozen, strict: an unknown field is an error naming the allowed ones."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def default(settings: type[Settings], field: str) -> Any:
    """The default of a settings field, for a constructor that takes the value loose."""
    return settings.model_fields[field].default


def split_host_port(value: str) -> tuple[str, int]:
    """Parse ``host:port`` / ``[v6]:port``; raise ValueError with what was expected."""
    match = re.fullmatch(r"\[([^\]]+)\]:(\d+)|([^:\[\]]+):(\d+)", value)
    if not match:
        raise ValueError(f"expected HOST:PORT such as 127.0.0.1:9321, got {value!r}")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if not 1 <= port <= 65535:
        raise ValueError(f"port must be between 1 and 65535, got {port}")
    return host, port


def resolve_path(value: Path, info: ValidationInfo) -> Path:
    """``value`` made absolute against the configuration file's directory, when one is known."""
    base = (info.context or {}).get("base_dir")
    if base is not None and not value.is_absolute():
        value = Path(base) / value
    return value


def existing_file(value: Path | None, info: ValidationInfo, what: str = "file",
                  directory_too: bool = False) -> Path | None:
    """``value`` resolved, or ValueError when no such file (or directory) exists."""
    if value is None:
        return None
    value = resolve_path(value, info)
    if not (value.exists() if directory_too else value.is_file()):
        raise ValueError(f"{what} {str(value)!r} does not exist")
    return value
