"""Carrying an action out: the model server's versions and labels, and the traffic router.

Every action drives the server to a target plan, so running one again (a restarted daemon
finishing a pending intent) is safe. The router changes before the server's labels in every
action: traffic leaves the canary before labels move, and a refused routing change (nginx) fails
the action with the server untouched, so the journaled status stays what the server serves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from tfwarden.core import failpoints
from tfwarden.core.status import ModelStatus
from tfwarden.lifecycle.actions import Action, Promote, Rollback, SetWeight, StageCanary, UnloadPrevious
from tfwarden.lifecycle.reconcile import rollback_target
from tfwarden.lifecycle.routers.base import Router


class ModelServer(Protocol):
    """What the lifecycle needs of a model server (``serving.tfserving.TFServingController``;
    ``tests/fakes.FakeServer``). Calls raise ServingError when the server refuses or times out."""

    async def stage_canary(self, model: str, version: int) -> object:
        """Load ``version`` beside the current ones, then label it ``canary``."""
        ...

    async def promote(self, model: str, version: int) -> object:
        """``stable`` (and ``canary``) -> ``version``; the old stable stays loaded."""
        ...

    async def rollback(self, model: str, to_version: int) -> object:
        """``stable`` -> ``to_version``; the ``canary`` label goes, other versions unload."""
        ...

    async def set_labels(self, model: str, labels: dict[str, int],
                         keep: tuple[int, ...] = ()) -> object:
        """Point ``labels`` (targets AVAILABLE) and keep ``keep`` loaded; drop the rest."""
        ...

    async def states(self, model: str) -> dict[int, tuple[str, str]]:
        """version -> (state name, error message), as the server reports them."""
        ...

    def labels(self, model: str) -> dict[str, int]:
        """The labels the server's configuration gives ``model`` now."""
        ...

    def base_path(self, model: str) -> Path:
        """Where ``model``'s version directories are."""
        ...

    def newest_version(self, model: str) -> int | None:
        """The highest complete version directory under the base path, or None."""
        ...


async def carry_out(action: Action, status: ModelStatus, server: ModelServer,
                    router: Router) -> None:
    """Make the server and the router do ``action`` (ServingError, RouterError)."""
    model, step = status.model, action.name
    if isinstance(action, StageCanary):
        await router.apply(model, 0)
        failpoints.reached(f"{step}.after_router")
        await server.stage_canary(model, action.version)
        failpoints.reached(f"{step}.after_server")
    elif isinstance(action, SetWeight):  # labels router: clients pick labels; weight informative
        await router.apply(model, action.weight)
        failpoints.reached(f"{step}.after_router")
    elif isinstance(action, Promote):
        # the router first: a refused routing change then leaves the server as it was (the
        # status stays true); for the moment of the label move, traffic stays on the old stable
        await router.apply(model, 0)
        failpoints.reached(f"{step}.after_router")
        await server.promote(model, action.version)
        failpoints.reached(f"{step}.after_server")
    elif isinstance(action, Rollback):
        target = rollback_target(action, status)
        await router.apply(model, 0)  # traffic off the canary first
        failpoints.reached(f"{step}.after_router")
        await server.rollback(model, target)
        failpoints.reached(f"{step}.after_server")
    elif isinstance(action, UnloadPrevious):
        assert status.stable_version is not None  # reconcile.outcome refused it otherwise
        await server.set_labels(model, {"stable": status.stable_version}, keep=())
        failpoints.reached(f"{step}.after_server")
