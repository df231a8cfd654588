"""The tfwarden exception tree.

Every error tfwarden raises on purpose derives from :class:`TfwardenError`; third-party errors
are translated at the boundary with ``raise ... from exc`` and their messages name the object
concerned (file, YAML path, model, version)::

    TfwardenError
    ├── ConfigError          a configuration file is missing, unparsable or invalid
    ├── StateError           the state directory or its database cannot be used
    ├── ServingError         a model server could not be reached or answered with an error
    │   └── ProtoLoadError   TF Serving's generated protobuf modules could not be loaded
    └── StartupError         the daemon could not start (bind, state, config)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class TfwardenError(Exception):
    """Base class of every error tfwarden raises on purpose."""


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with a configuration file, at a YAML path such as ``models[1].slo``."""

    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        at_line = f"line {self.line}" if self.line is not None else ""
        if not self.path:
            return f"{at_line}: {self.message}" if at_line else self.message
        return f"{self.path} ({at_line}): {self.message}" if at_line else f"{self.path}: {self.message}"


class ConfigError(TfwardenError):
    """A configuration file is missing, unparsable or invalid; ``problems`` lists each issue."""

    def __init__(self, source: str, problems: Sequence[ConfigProblem]) -> None:
        self.source = source
        self.problems = tuple(problems)
        if len(self.problems) == 1:
            detail = str(self.problems[0])
        else:
            detail = f"{len(self.problems)} problems: " + "; ".join(str(p) for p in self.problems)
        super().__init__(f"{source}: {detail}")


class StateError(TfwardenError):
    """The state directory or its SQLite database cannot be used."""


class ServingError(TfwardenError):
    """A model server could not be reached or answered with an error."""


class ProtoLoadError(ServingError):
    """TF Serving's generated protobuf modules could not be loaded."""


class StartupError(TfwardenError):
    """The daemon could not start."""
