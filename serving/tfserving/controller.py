"""Carries lifecycle actions out on a TF Serving server, within TF Serving's label rules.

- The model config file is the source of truth (``modelconfig``); the full config is always
  sent: TF Serving replaces the whole config on every reload.
- Delivery: ``grpc`` sends HandleReloadConfigRequest (with a deadline; the RPC does not wait for
  new versions of existing models, and can hang on bad base paths: TF Serving issues #1565,
  #1447); ``file`` relies on a server started with ``--model_config_file_poll_wait_seconds``.
  Either way the result is confirmed through GetModelStatus / GetModelMetadata.
- Labels only ever point at AVAILABLE versions: moving a label to a version is two steps
  (load it beside the current ones, poll until AVAILABLE, then move the label), and a version is
  only dropped from the policy once no label points at it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from tfwarden.core.errors import ServingError, ServingRpcError
from tfwarden.serving.tfserving.client import TFServingClient
from tfwarden.serving.tfserving.modelconfig import (
    ModelPlan,
    base_path,
    current_plan,
    newest_version,
    read_config,
    with_plan,
    write_config_atomically,
)

POLL_SECONDS = 0.2
OWNED_LABELS = ("stable", "canary")  # the labels tfwarden moves; any other is left alone


class TFServingController:
    """Moves one server's versions and labels through its model config file."""

    def __init__(self, client: TFServingClient, config_file: Path, *,
                 delivery: Literal["grpc", "file"] = "grpc",
                 available_timeout_seconds: float = 120.0,
                 guard: Callable[[], None] | None = None) -> None:
        self.client, self.config_file = client, config_file
        self.guard = guard  # raises LeaseLost when this replica may no longer write the file
        self.delivery = delivery
        self.available_timeout = available_timeout_seconds

    # -- primitives ------------------------------------------------------------------------
    async def apply(self, model: str, plan: ModelPlan) -> None:
        """Write the whole config with ``model``'s new plan and deliver it; when the server
        refuses the reload, the file is put back as it was (it must keep saying what the
        server serves: a later restart of the server reads it). The guard is asked first:
        a replica fenced off between two steps of an action writes nothing more."""
        if self.guard is not None:
            self.guard()
        previous = read_config(self.config_file)
        config = with_plan(previous, model, plan)
        write_config_atomically(self.config_file, config)
        if self.delivery == "grpc":
            try:
                await self.client.reload_config(config)
            except ServingError as exc:
                if self.guard is not None:  # lost meanwhile: the file is the new owner's now
                    self.guard()
                write_config_atomically(self.config_file, previous)
                raise ServingError(f"model {model!r}: {exc}; model config file restored") \
                    from exc

    async def states(self, model: str) -> dict[int, tuple[str, str]]:
        """version -> (state name, error message); empty when the server knows no version."""
        try:
            versions = await self.client.model_status(model)
        except ServingRpcError as exc:
            if exc.code == "NOT_FOUND":
                return {}
            raise
        return {v.version: (v.state, v.error_message) for v in versions}

    async def wait_available(self, model: str, version: int) -> None:
        deadline = time.monotonic() + self.available_timeout
        while True:
            state, error = (await self.states(model)).get(version, ("UNKNOWN", ""))
            if state == "AVAILABLE":
                return
            if state == "END" and error:
                raise ServingError(f"model {model!r} version {version} failed to load: {error}")
            if time.monotonic() > deadline:
                raise ServingError(f"model {model!r} version {version} not AVAILABLE after "
                                   f"{self.available_timeout:.0f} s (state {state})")
            await asyncio.sleep(POLL_SECONDS)

    async def wait_label(self, model: str, label: str, version: int) -> None:
        deadline = time.monotonic() + self.available_timeout
        while await self.client.label_target(model, label) != version:
            if time.monotonic() > deadline:
                raise ServingError(f"label {label!r} of model {model!r} does not serve version "
                                   f"{version} after {self.available_timeout:.0f} s")
            await asyncio.sleep(POLL_SECONDS)

    # -- reading the config file -----------------------------------------------------------
    def plan(self, model: str) -> ModelPlan:
        return current_plan(read_config(self.config_file), model)

    def labels(self, model: str) -> dict[str, int]:
        return self.plan(model).labels

    def base_path(self, model: str) -> Path:
        return base_path(self.config_file, model)

    def newest_version(self, model: str) -> int | None:
        return newest_version(self.base_path(model))

    # -- actions ---------------------------------------------------------------------------
    async def load_version(self, model: str, version: int) -> ModelPlan:
        """Step 1 of a label move: load ``version`` beside what is loaded; wait AVAILABLE."""
        plan = self.plan(model)
        if version not in plan.versions:
            plan = ModelPlan(tuple(sorted({*plan.versions, version})), plan.labels)
            await self.apply(model, plan)
        await self.wait_available(model, version)
        return plan

    async def set_labels(self, model: str, labels: dict[str, int],
                         keep: tuple[int, ...] = ()) -> ModelPlan:
        """Step 2: point tfwarden's labels (``stable``, ``canary``; every target already
        AVAILABLE), keep ``keep`` plus every labelled version loaded, drop the rest. Labels
        tfwarden does not own stay as they are, with their versions."""
        for version in labels.values():
            await self.wait_available(model, version)
        foreign = {k: v for k, v in self.plan(model).labels.items() if k not in OWNED_LABELS}
        labels = {**foreign, **labels}
        versions = tuple(sorted({*labels.values(), *keep}))
        plan = ModelPlan(versions, labels)
        await self.apply(model, plan)
        for label, version in labels.items():
            await self.wait_label(model, label, version)
        return plan

    async def stage_canary(self, model: str, version: int) -> ModelPlan:
        plan = await self.load_version(model, version)
        labels = {**plan.labels, "canary": version}
        return await self.set_labels(model, labels, keep=plan.versions)

    async def promote(self, model: str, version: int, keep_previous: bool = True) -> ModelPlan:
        """stable (and canary) -> ``version``; the old stable stays loaded for instant rollback."""
        previous = self.plan(model).labels.get("stable")
        keep = (previous,) if keep_previous and previous is not None else ()
        return await self.set_labels(model, {"stable": version, "canary": version}, keep=keep)

    async def rollback(self, model: str, to_version: int) -> ModelPlan:
        """stable -> ``to_version`` (loaded first if it is not); the canary label is removed and
        the rolled-back version unloaded once no label points at it."""
        await self.load_version(model, to_version)
        return await self.set_labels(model, {"stable": to_version}, keep=())
