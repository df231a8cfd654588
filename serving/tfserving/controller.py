"""Carries lifecycle actions out on a TF Serving server, within TF Serving's label rules.

- The model config file is the source of truth: it is read, changed for one model, validated by
  parsing it back, and written atomically (temp file in the same directory, fsync, rename). The
  full config is always sent: TF Serving replaces the whole config on every reload.
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
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import grpc
from google.protobuf import text_format

from tfwarden.core.errors import ServingError
from tfwarden.serving.tfserving import protos

AVAILABLE = 30


@dataclass(frozen=True)
class ModelPlan:
    """What one model's entry should say: the versions to keep loaded and the labels."""

    versions: tuple[int, ...]
    labels: dict[str, int]


def read_config(path: Path) -> Any:
    config = protos.load().model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(path.read_text(), config)
    except (OSError, text_format.ParseError) as exc:
        raise ServingError(f"model config file {path}: {exc}") from exc
    return config


def write_config_atomically(path: Path, config: Any) -> None:
    """Write ``config`` so that a reader sees the old or the new file, never a partial one."""
    text = text_format.MessageToString(config)
    check = protos.load().model_server_config_pb2.ModelServerConfig()
    text_format.Parse(text, check)  # parse back before anything touches the real file
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def with_plan(config: Any, model: str, plan: ModelPlan) -> Any:
    """A copy of ``config`` where ``model`` serves ``plan.versions`` with ``plan.labels``."""
    missing = {label: v for label, v in plan.labels.items() if v not in plan.versions}
    if missing:
        raise ServingError(f"model {model!r}: labels {missing} point at versions not in "
                           f"{list(plan.versions)}")
    new = type(config)()
    new.CopyFrom(config)
    entries = [c for c in new.model_config_list.config if c.name == model]
    if not entries:
        raise ServingError(f"model {model!r} is not in the model config file")
    entry = entries[0]
    entry.model_version_policy.ClearField("policy_choice")
    entry.model_version_policy.specific.versions.extend(sorted(plan.versions))
    entry.version_labels.clear()
    for label, version in sorted(plan.labels.items()):
        entry.version_labels[label] = version
    return new


def current_plan(config: Any, model: str) -> ModelPlan:
    for entry in config.model_config_list.config:
        if entry.name == model:
            policy = entry.model_version_policy
            versions = tuple(policy.specific.versions) if policy.WhichOneof(
                "policy_choice") == "specific" else ()
            return ModelPlan(versions, dict(entry.version_labels))
    raise ServingError(f"model {model!r} is not in the model config file")


class TFServingController:
    def __init__(self, grpc_address: str, config_file: Path, *,
                 delivery: Literal["grpc", "file"] = "grpc", timeout_seconds: float = 10.0,
                 available_timeout_seconds: float = 120.0) -> None:
        self.config_file = config_file
        self.delivery = delivery
        self.timeout = timeout_seconds
        self.available_timeout = available_timeout_seconds
        self._address = grpc_address
        self._channel: grpc.aio.Channel | None = None

    def _stubs(self) -> tuple[Any, Any, Any]:
        pb = protos.load()
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self._address)
        return (pb, pb.model_service_pb2_grpc.ModelServiceStub(self._channel),
                pb.prediction_service_pb2_grpc.PredictionServiceStub(self._channel))

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    # -- primitives ------------------------------------------------------------------------
    async def apply(self, model: str, plan: ModelPlan) -> None:
        """Write the whole config with ``model``'s new plan and deliver it."""
        config = with_plan(read_config(self.config_file), model, plan)
        write_config_atomically(self.config_file, config)
        if self.delivery == "grpc":
            pb, models, _ = self._stubs()
            request = pb.model_management_pb2.ReloadConfigRequest()
            request.config.CopyFrom(config)
            try:
                response = await models.HandleReloadConfigRequest(request, timeout=self.timeout)
            except grpc.aio.AioRpcError as exc:
                raise ServingError(f"reload of model {model!r} refused: {exc.code().name}: "
                                   f"{exc.details()}") from exc
            if response.status.error_code != 0:
                raise ServingError(f"reload of model {model!r} failed: "
                                   f"{response.status.error_message}")

    async def states(self, model: str) -> dict[int, tuple[int, str]]:
        """version -> (state number, error message) from GetModelStatus."""
        pb, models, _ = self._stubs()
        request = pb.get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = model
        try:
            response = await models.GetModelStatus(request, timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return {}
            raise ServingError(f"GetModelStatus({model}): {exc.code().name}: {exc.details()}") \
                from exc
        return {s.version: (s.state, s.status.error_message) for s in response.model_version_status}

    async def wait_available(self, model: str, version: int) -> None:
        deadline = time.monotonic() + self.available_timeout
        while True:
            state, error = (await self.states(model)).get(version, (0, ""))
            if state == AVAILABLE:
                return
            if state == 50 and error:
                raise ServingError(f"model {model!r} version {version} failed to load: {error}")
            if time.monotonic() > deadline:
                raise ServingError(f"model {model!r} version {version} not AVAILABLE after "
                                   f"{self.available_timeout:.0f} s (state {state})")
            await asyncio.sleep(0.2)

    async def label_target(self, model: str, label: str) -> int | None:
        """The version a label resolves to on the server (GetModelMetadata through the label)."""
        pb, _, predictions = self._stubs()
        request = pb.get_model_metadata_pb2.GetModelMetadataRequest()
        request.model_spec.name = model
        request.model_spec.version_label = label
        request.metadata_field.append("signature_def")
        try:
            response = await predictions.GetModelMetadata(request, timeout=self.timeout)
        except grpc.aio.AioRpcError:
            return None
        return int(response.model_spec.version.value)

    async def wait_label(self, model: str, label: str, version: int) -> None:
        deadline = time.monotonic() + self.available_timeout
        while await self.label_target(model, label) != version:
            if time.monotonic() > deadline:
                raise ServingError(f"label {label!r} of model {model!r} does not serve version "
                                   f"{version} after {self.available_timeout:.0f} s")
            await asyncio.sleep(0.2)

    # -- actions ---------------------------------------------------------------------------
    async def load_version(self, model: str, version: int) -> ModelPlan:
        """Step 1 of a label move: load ``version`` beside what is loaded; wait AVAILABLE."""
        plan = current_plan(read_config(self.config_file), model)
        if version not in plan.versions:
            plan = ModelPlan(tuple(sorted({*plan.versions, version})), plan.labels)
            await self.apply(model, plan)
        await self.wait_available(model, version)
        return plan

    async def set_labels(self, model: str, labels: dict[str, int],
                         keep: tuple[int, ...] = ()) -> ModelPlan:
        """Step 2: point labels (every target already AVAILABLE), keep ``keep`` plus every
        labelled version loaded, drop the rest."""
        for version in labels.values():
            await self.wait_available(model, version)
        versions = tuple(sorted({*labels.values(), *keep}))
        plan = ModelPlan(versions, dict(labels))
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
        plan = current_plan(read_config(self.config_file), model)
        previous = plan.labels.get("stable")
        keep = (previous,) if keep_previous and previous is not None else ()
        return await self.set_labels(model, {"stable": version, "canary": version}, keep=keep)

    async def rollback(self, model: str, to_version: int) -> ModelPlan:
        """stable -> ``to_version`` (loaded first if it is not); the canary label is removed and
        the rolled-back version unloaded once no label points at it."""
        await self.load_version(model, to_version)
        return await self.set_labels(model, {"stable": to_version}, keep=())
