"""The TF Serving controller against the devserver: two-step label moves, promotion that keeps
the previous version loaded, rollback, both config delivery modes, and a watcher asserting that
requests to the `stable` label succeed throughout."""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.helpers import TESTDATA, DevServer
from tfwarden.core.errors import ServingError
from tfwarden.serving.tfserving.client import Channels, TFServingClient
from tfwarden.serving.tfserving.controller import TFServingController
from tfwarden.serving.tfserving.modelconfig import ModelPlan, current_plan, read_config, with_plan

pytestmark = pytest.mark.integration
TFS = TESTDATA / "tfserving"


class StableWatcher(threading.Thread):
    """Predicts through the `stable` label in a loop; records every failure and the versions
    that answered."""

    def __init__(self, address: str, model: str = "m", width: int | None = None,
                 pause: float = 0.0) -> None:
        super().__init__(daemon=True)
        self.address, self.stop, self.failures, self.served = address, threading.Event(), [], set()
        self.model, self.width = model, width  # width: one row of that many features
        self.pause = pause  # between calls (long suites on 2 cores)
        self.calls = 0
        self.last_served: int | None = None

    def run(self) -> None:
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

        with grpc.insecure_channel(self.address) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            request = predict_pb2.PredictRequest()
            request.model_spec.name = self.model
            request.model_spec.version_label = "stable"
            request.inputs["x"].dtype = 1
            request.inputs["x"].tensor_shape.dim.add().size = 1
            if self.width is None:
                request.inputs["x"].float_val.append(2.0)
            else:
                request.inputs["x"].tensor_shape.dim.add().size = self.width
                request.inputs["x"].float_val.extend([0.5] * self.width)
            while not self.stop.is_set():
                try:
                    response = stub.Predict(request, timeout=5)
                    self.served.add(response.model_spec.version.value)
                    self.last_served = response.model_spec.version.value
                except grpc.RpcError as exc:
                    self.failures.append(f"{exc.code().name}: {exc.details()}")
                self.calls += 1
                if self.pause:
                    time.sleep(self.pause)

    def wait_served(self, version: int, timeout: float = 30.0) -> None:
        """Block until a call through `stable` is answered by ``version`` (bounded: a guard
        against a hang only), so the watcher is known to cover what follows."""
        deadline = time.monotonic() + timeout
        while self.last_served != version:
            assert time.monotonic() < deadline, (
                f"`stable` never answered with version {version}: served {self.served}, "
                f"{self.calls} calls, failures {self.failures[-3:]}")
            time.sleep(0.01)


class Served:
    """A devserver and what it takes to build a controller for it (a gRPC channel belongs to
    one event loop: ``controller()`` inside ``asyncio.run``, ``close()`` before it ends)."""

    def __init__(self, server: DevServer, config: Path, delivery: str) -> None:
        self.server, self.config, self.delivery = server, config, delivery
        self.channels = Channels()

    def controller(self) -> TFServingController:
        self.channels = Channels()
        client = TFServingClient("dev", grpc_address=self.server.grpc_address, rest_url=None,
                                 channels=self.channels)
        return TFServingController(client, self.config, delivery=self.delivery,  # type: ignore[arg-type]
                                   available_timeout_seconds=30)

    async def close(self) -> None:
        await self.channels.close()


@pytest.fixture(params=["grpc", "file"])
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Served]:
    base = tmp_path / "models" / "m"
    shutil.copytree(TFS / "saved_model_half_plus_two_cpu" / "00000123", base / "1")
    shutil.copytree(TFS / "saved_model_half_plus_three" / "00000123", base / "2")
    config = tmp_path / "models.config"
    config.write_text(f'model_config_list {{ config {{ name: "m" base_path: "{base}" '
                      'model_platform: "tensorflow" model_version_policy { specific { versions: 1 } } '
                      '} }')
    server = DevServer(f"--model_config_file={config}", "--model_config_file_poll_wait_seconds=1",
                       workdir=tmp_path, rest=False)
    server.wait_ready()
    served = Served(server, config, request.param)

    async def label_stable() -> None:
        await served.controller().set_labels("m", {"stable": 1}, keep=(1,))
        await served.close()

    asyncio.run(label_stable())
    yield served
    server.stop()


def test_canary_promote_rollback_without_a_failed_stable_request(served: Served) -> None:
    watcher = StableWatcher(served.server.grpc_address)
    watcher.start()

    async def scenario() -> dict[str, object]:
        seen: dict[str, object] = {}
        controller = served.controller()
        client = controller.client
        try:
            await asyncio.to_thread(watcher.wait_served, 1)  # watching before the first move
            plan = await controller.stage_canary("m", 2)
            seen["staged"] = plan
            seen["canary_serves"] = await client.label_target("m", "canary")
            seen["stable_serves"] = await client.label_target("m", "stable")
            plan = await controller.promote("m", 2)
            seen["promoted"] = plan
            seen["states_after_promote"] = await controller.states("m")
            await asyncio.to_thread(watcher.wait_served, 2)
            plan = await controller.rollback("m", 1)
            seen["rolled_back"] = plan
            seen["stable_after_rollback"] = await client.label_target("m", "stable")
            await asyncio.to_thread(watcher.wait_served, 1)
        finally:
            await served.close()
        return seen

    seen = asyncio.run(scenario())
    watcher.stop.set()
    watcher.join(timeout=10)
    assert seen["staged"] == ModelPlan((1, 2), {"stable": 1, "canary": 2})
    assert (seen["canary_serves"], seen["stable_serves"]) == (2, 1)
    assert seen["promoted"] == ModelPlan((1, 2), {"stable": 2, "canary": 2})
    states = seen["states_after_promote"]
    assert states[1][0] == states[2][0] == "AVAILABLE"  # the previous good one stays loaded
    assert seen["rolled_back"] == ModelPlan((1,), {"stable": 1})
    assert seen["stable_after_rollback"] == 1
    assert watcher.failures == []  # no label ever pointed at an unloaded version
    assert watcher.served == {1, 2}


def test_plans_refuse_labels_on_versions_they_do_not_load(served: Served) -> None:
    config = read_config(served.config)
    assert current_plan(config, "m") == ModelPlan((1,), {"stable": 1})
    with pytest.raises(ServingError, match="point at versions not in"):
        with_plan(config, "m", ModelPlan((1,), {"stable": 2}))
    with pytest.raises(ServingError, match="not in the model config file"):
        current_plan(config, "other")
