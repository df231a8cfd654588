"""The probe interface."""

from __future__ import annotations

from typing import Protocol

from tfwarden.core.types import ProbeResult


class Probe(Protocol):
    """Observes one target.

    ``name`` identifies the probe (``status:tfs-main``); ``run`` returns a ProbeResult and never
    raises for a failing or unreachable target (``ok`` False with ``error`` instead).
    """

    name: str

    async def run(self) -> ProbeResult: ...
