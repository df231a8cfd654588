"""devserver model lifecycle: configs, polling, labels and version states like TF Serving."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from google.protobuf import text_format

from tests.helpers import TESTDATA, DevServer
from tests.integration.devserver.test_faults import rss_bytes

pytestmark = pytest.mark.integration
TFS = TESTDATA / "tfserving"
TWO = TFS / "saved_model_half_plus_two_cpu" / "00000123"
THREE = TFS / "saved_model_half_plus_three" / "00000123"


def config_text(base: Path, versions: list[int], labels: dict[str, int] | None = None,
                extra: str = "") -> str:
    policy = " ".join(f"versions: {v}" for v in versions)
    label_text = " ".join(f'version_labels {{ key: "{k}" value: {v} }}'
                          for k, v in (labels or {}).items())
    return (f'model_config_list {{ config {{ name: "m" base_path: "{base}" '
            f'model_platform: "tensorflow" model_version_policy {{ specific {{ {policy} }} }} '
            f"{label_text} {extra} }} }}")


class Client:
    def __init__(self, server: DevServer) -> None:
        from tensorflow_serving.apis import (
            get_model_status_pb2,
            model_management_pb2,
            model_service_pb2_grpc,
            predict_pb2,
            prediction_service_pb2_grpc,
        )

        self.server = server
        self.channel = grpc.insecure_channel(server.grpc_address)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)
        self.predictions = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.pb = (get_model_status_pb2, model_management_pb2, predict_pb2)

    def reload(self, text: str) -> None:
        request = self.pb[1].ReloadConfigRequest()
        text_format.Parse(text, request.config)
        self.models.HandleReloadConfigRequest(request, timeout=60)

    def status(self) -> list[tuple[int, str, int]]:
        request = self.pb[0].GetModelStatusRequest()
        request.model_spec.name = "m"
        response = self.models.GetModelStatus(request, timeout=10)
        names = {10: "START", 20: "LOADING", 30: "AVAILABLE", 40: "UNLOADING", 50: "END"}
        return [(s.version, names[s.state], s.status.error_code)
                for s in response.model_version_status]

    def wait_state(self, version: int, state: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if any(v == version and s == state for v, s, _ in self.status()):
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"version {version} never {state}: {self.status()}")

    def predict(self, label: str | None = None, version: int | None = None) -> tuple[float, int]:
        request = self.pb[2].PredictRequest()
        request.model_spec.name = "m"
        if label:
            request.model_spec.version_label = label
        if version:
            request.model_spec.version.value = version
        tensor = request.inputs["x"]
        tensor.dtype = 1
        tensor.tensor_shape.dim.add().size = 1
        tensor.float_val.append(2.0)
        response = self.predictions.Predict(request, timeout=10)
        return response.outputs["y"].float_val[0], response.model_spec.version.value

    def close(self) -> None:
        self.channel.close()


@pytest.fixture
def base(tmp_path: Path) -> Path:
    path = tmp_path / "models" / "m"
    path.mkdir(parents=True)
    shutil.copytree(TWO, path / "123")
    return path


@pytest.fixture
def served(tmp_path: Path, base: Path) -> Iterator[Client]:
    config = tmp_path / "models.config"
    config.write_text(config_text(base, [123]))
    server = DevServer(f"--model_config_file={config}", "--file_system_poll_wait_seconds=1",
                       workdir=tmp_path)
    server.wait_ready()
    client = Client(server)
    yield client
    client.close()
    server.stop()


def test_two_step_canary_promote_and_unload_keeps_end(served: Client, base: Path) -> None:
    shutil.copytree(THREE, base / "124")  # a distinguishable new version (0.5x + 3)
    # moving a label onto 124 before it is loaded is refused, and nothing changes
    with pytest.raises(grpc.RpcError) as caught:
        served.reload(config_text(base, [123, 124], {"stable": 123, "canary": 124}))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.details() == ("Request to assign label to version 124 of model m, which is "
                                      "not currently available for inference")
    # step 1: load 124 beside 123 (returns without waiting for 124), poll until AVAILABLE
    served.reload(config_text(base, [123, 124], {"stable": 123}))
    served.wait_state(124, "AVAILABLE")
    assert served.predict() == (4.0, 124)  # unlabeled requests go to the highest version
    # step 2: move canary, then stable
    served.reload(config_text(base, [123, 124], {"stable": 123, "canary": 124}))
    assert served.predict("stable") == (3.0, 123)
    assert served.predict("canary") == (4.0, 124)
    served.reload(config_text(base, [123, 124], {"stable": 124, "canary": 124}))
    assert served.predict("stable") == (4.0, 124)
    # roll forward: drop 123; it stays listed as END, newest first
    served.reload(config_text(base, [124], {"stable": 124}))
    served.wait_state(123, "END")
    assert served.status() == [(124, "AVAILABLE", 0), (123, "END", 0)]
    with pytest.raises(grpc.RpcError) as caught:
        served.predict(version=123)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert caught.value.details() == "Servable not found for request: Specific(m, 123)"
    rest = httpx.get(f"{served.server.rest_url}/v1/models/m").json()
    assert [v["state"] for v in rest["model_version_status"]] == ["AVAILABLE", "END"]


def test_unknown_label_and_logging_config_and_relative_path(served: Client, base: Path) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        served.predict("nope")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "Unrecognized servable version label: nope"
    logging_config = 'logging_config { sampling_config { sampling_rate: 0.1 } }'
    with pytest.raises(grpc.RpcError) as caught:
        served.reload(config_text(base, [123], extra=logging_config))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "No request-logger-creator provided."
    with pytest.raises(grpc.RpcError) as caught:
        served.reload(config_text(Path("relative/m"), [123]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "absolute path" in caught.value.details()
    assert served.predict() == (3.0, 123)  # still serving


def test_new_version_directory_is_picked_up_by_polling(tmp_path: Path, base: Path) -> None:
    server = DevServer("--model_name=m", f"--model_base_path={base}",
                       "--file_system_poll_wait_seconds=1", workdir=tmp_path, rest=False)
    server.wait_ready()
    client = Client(server)
    try:
        partial = base / "124"
        shutil.copytree(THREE / "variables", partial / "variables")  # no saved_model.pb yet
        time.sleep(2.5)
        assert [v for v, _, _ in client.status()] == [123]  # a half-written dir is not loaded
        shutil.copy(THREE / "saved_model.pb", partial / "saved_model.pb")
        client.wait_state(124, "AVAILABLE")
        client.wait_state(123, "END")  # latest{1}: the old version goes once the new one is up
        assert client.predict() == (4.0, 124)
        shutil.rmtree(base / "124")  # a removed directory unloads its version
        client.wait_state(124, "END")
    finally:
        client.close()
        server.stop()


def test_allow_labels_for_unavailable_models_flag(tmp_path: Path, base: Path) -> None:
    config = tmp_path / "models.config"
    config.write_text(config_text(base, [123, 124], {"stable": 123, "canary": 124}))
    server = DevServer(f"--model_config_file={config}",
                       "--allow_version_labels_for_unavailable_models=true",
                       workdir=tmp_path, rest=False)
    server.wait_ready()  # a new label on a missing version is accepted with the flag
    client = Client(server)
    try:
        with pytest.raises(grpc.RpcError) as caught:
            client.predict("canary")
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as caught:  # re-pointing an existing label is not
            client.reload(config_text(base, [123, 124], {"stable": 124, "canary": 124}))
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        client.close()
        server.stop()


def test_unload_waits_for_requests_in_flight(served: Client, base: Path) -> None:
    import json
    import threading

    shutil.copytree(THREE, base / "124")
    served.reload(config_text(base, [123, 124]))
    served.wait_state(124, "AVAILABLE")
    # the fault's leak is allocated once a request holds its version, just before the delay:
    # the devserver's RSS tells when the request is in (however long it took to get there)
    leak = 64 * 2**20
    (base / "123" / "devserver-faults.json").write_text(json.dumps(
        {"latency": {"fixed_ms": 1500}, "leak": {"bytes_per_request": leak}}))
    time.sleep(0.7)  # the fault file is re-read at most every 0.5 s
    result: dict[str, object] = {}

    def slow_request() -> None:
        try:
            result["value"] = served.predict(version=123)
        except grpc.RpcError as exc:
            result["error"] = f"{exc.code().name}: {exc.details()}"

    pid = served.server.proc.pid
    before = rss_bytes(pid)
    thread = threading.Thread(target=slow_request)
    thread.start()
    deadline = time.monotonic() + 30
    while rss_bytes(pid) < before + leak * 3 // 4:  # not yet holding version 123
        assert thread.is_alive() and time.monotonic() < deadline, result
        time.sleep(0.01)
    served.reload(config_text(base, [124]))  # drops 123 while the request runs
    thread.join(timeout=10)
    assert result == {"value": (3.0, 123)}  # TF Serving unloads only when handles are released
    served.wait_state(123, "END")
