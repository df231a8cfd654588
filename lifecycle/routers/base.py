"""The router interface, and the labels router (clients choose the `stable` or `canary` label)."""

from __future__ import annotations

from typing import Protocol


class Router(Protocol):
    """Sends ``weight`` percent of a model's unaddressed predict traffic to its canary label
    (0: everything to stable). ``apply`` raises RouterError when the change could not be made;
    the previous routing then stays in force."""

    name: str

    async def apply(self, model: str, weight: int) -> None: ...


class LabelsRouter:
    """TF Serving labels only: clients address `stable` or `canary` themselves, so the weight is
    informative (the canary gets the traffic sent to its label)."""

    name = "labels"

    async def apply(self, model: str, weight: int) -> None:
        return None


class ShadowRouter:
    """No live traffic ever reaches the canary: it is judged on the golden requests tfwarden's
    probes replay to its label (latency against stable, outputs against the expected ones), and
    is then promoted or rolled back as a whole."""

    name = "shadow"

    async def apply(self, model: str, weight: int) -> None:
        return None
