"""TF Serving conformance: every case of reference/tfserving.md section 7 against the devserver.

The devserver serves TF Serving's own test models (tests/testdata/tfserving) over plain HTTP and
over gRPC with the tensorflow-serving-api client stubs, as `tensorflow_model_server_test.py` and
`http_rest_api_handler_test.cc` do.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from tests.helpers import TESTDATA, DevServer

pytestmark = pytest.mark.integration
TFS = TESTDATA / "tfserving"


@pytest.fixture(scope="module")
def protos():  # type: ignore[no-untyped-def]
    """Stubs and messages (the test process may import real TensorFlow protos)."""
    from tensorflow.core.example import example_pb2
    from tensorflow.core.framework import tensor_pb2, types_pb2
    from tensorflow_serving.apis import (
        classification_pb2,
        get_model_metadata_pb2,
        get_model_status_pb2,
        inference_pb2,
        model_service_pb2_grpc,
        predict_pb2,
        prediction_service_pb2_grpc,
        regression_pb2,
    )

    return type("P", (), dict(
        example_pb2=example_pb2, tensor_pb2=tensor_pb2, types_pb2=types_pb2,
        classification_pb2=classification_pb2, get_model_metadata_pb2=get_model_metadata_pb2,
        get_model_status_pb2=get_model_status_pb2, inference_pb2=inference_pb2,
        model_service_pb2_grpc=model_service_pb2_grpc, predict_pb2=predict_pb2,
        prediction_service_pb2_grpc=prediction_service_pb2_grpc, regression_pb2=regression_pb2))


@pytest.fixture(scope="module")
def default_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    """half_plus_two_cpu as model 'default' with monitoring, like the TF Serving tests."""
    server = DevServer("--model_name=default",
                       f"--model_base_path={TFS / 'saved_model_half_plus_two_cpu'}",
                       f"--monitoring_config_file={TFS / 'monitoring_config.txt'}",
                       workdir=tmp_path_factory.mktemp("default"))
    server.wait_ready()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    """http_rest_api_handler_test's setup: 2_versions model, specific{123}, Version_Label->123."""
    work = tmp_path_factory.mktemp("two")
    config = work / "models.config"
    config.write_text(f"""model_config_list {{ config {{
      name: "default" base_path: "{TFS / 'saved_model_half_plus_two_2_versions'}"
      model_platform: "tensorflow"
      model_version_policy {{ specific {{ versions: 123 }} }}
    }} }}""")
    server = DevServer(f"--model_config_file={config}", workdir=work)
    server.wait_ready()
    # labels can only point at AVAILABLE versions: add the label once 123 is loaded
    config.write_text(config.read_text().replace(
        'model_platform: "tensorflow"',
        'model_platform: "tensorflow" version_labels { key: "Version_Label" value: 123 }'))
    from google.protobuf import text_format
    from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc
    from tensorflow_serving.config import model_server_config_pb2

    request = model_management_pb2.ReloadConfigRequest()
    text_format.Parse(config.read_text(), request.config)
    with grpc.insecure_channel(server.grpc_address) as channel:
        model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(request, timeout=30)
    assert model_server_config_pb2 is not None
    yield server
    server.stop()


def post(server: DevServer, path: str, body: object | str) -> httpx.Response:
    content = body if isinstance(body, str) else json.dumps(body)
    return httpx.post(server.rest_url + path, content=content, timeout=30)


def float_input(protos, values: list[float], shape: list[int]):  # type: ignore[no-untyped-def]
    tensor = protos.tensor_pb2.TensorProto(dtype=protos.types_pb2.DT_FLOAT)
    for size in shape:
        tensor.tensor_shape.dim.add().size = size
    tensor.float_val.extend(values)
    return tensor


def example(protos, **features: float):  # type: ignore[no-untyped-def]
    ex = protos.example_pb2.Example()
    for name, value in features.items():
        ex.features.feature[name].float_list.value.append(value)
    return ex


# -- gRPC (cases 1-6) ---------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [[1], [1, 1]])
@pytest.mark.parametrize("output_filter", [[], ["y"]])
def test_case01_grpc_predict(default_server: DevServer, protos, shape, output_filter) -> None:  # type: ignore[no-untyped-def]
    request = protos.predict_pb2.PredictRequest()
    request.model_spec.name = "default"
    request.inputs["x"].CopyFrom(float_input(protos, [2.0], shape))
    request.output_filter.extend(output_filter)
    with grpc.insecure_channel(default_server.grpc_address) as channel:
        stub = protos.prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(request, timeout=10)
    assert list(response.outputs) == ["y"]
    assert response.outputs["y"].dtype == protos.types_pb2.DT_FLOAT
    assert list(response.outputs["y"].float_val) == [3.0]
    assert response.model_spec.name == "default"
    assert response.model_spec.signature_name == "serving_default"
    assert response.model_spec.version.value == 123


def test_case02_grpc_model_status(default_server: DevServer, protos) -> None:  # type: ignore[no-untyped-def]
    request = protos.get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "default"
    with grpc.insecure_channel(default_server.grpc_address) as channel:
        response = protos.model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
            request, timeout=10)
    assert len(response.model_version_status) == 1
    status = response.model_version_status[0]
    assert status.version == 123 and status.state == 30 and status.status.error_code == 0


def test_case03_grpc_metadata(default_server: DevServer, protos) -> None:  # type: ignore[no-untyped-def]
    request = protos.get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "default"
    request.metadata_field.append("signature_def")
    with grpc.insecure_channel(default_server.grpc_address) as channel:
        stub = protos.prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.GetModelMetadata(request, timeout=10)
    assert response.model_spec.name == "default" and response.model_spec.version.value == 123
    assert list(response.metadata) == ["signature_def"]
    from tensorflow_serving.apis.get_model_metadata_pb2 import SignatureDefMap

    sig_map = SignatureDefMap()
    response.metadata["signature_def"].Unpack(sig_map)
    assert "serving_default" in sig_map.signature_def


def test_case04_grpc_classify(default_server: DevServer, protos) -> None:  # type: ignore[no-untyped-def]
    request = protos.classification_pb2.ClassificationRequest()
    request.model_spec.name = "default"
    request.model_spec.signature_name = "classify_x_to_y"
    request.input.example_list.examples.append(example(protos, x=2.0))
    with grpc.insecure_channel(default_server.grpc_address) as channel:
        response = protos.prediction_service_pb2_grpc.PredictionServiceStub(channel).Classify(
            request, timeout=10)
    assert len(response.result.classifications) == 1
    classes = response.result.classifications[0].classes
    assert len(classes) == 1 and classes[0].score == 3.0
    assert response.model_spec.name == "default"
    assert response.model_spec.signature_name == "classify_x_to_y"
    assert response.model_spec.version.value == 123


def test_case05_grpc_regress(default_server: DevServer, protos) -> None:  # type: ignore[no-untyped-def]
    request = protos.regression_pb2.RegressionRequest()
    request.model_spec.name = "default"
    request.model_spec.signature_name = "regress_x_to_y"
    request.input.example_list.examples.append(example(protos, x=2.0))
    with grpc.insecure_channel(default_server.grpc_address) as channel:
        response = protos.prediction_service_pb2_grpc.PredictionServiceStub(channel).Regress(
            request, timeout=10)
    assert [r.value for r in response.result.regressions] == [3.0]
    assert response.model_spec.version.value == 123


def test_case06_grpc_multi_inference(default_server: DevServer, protos) -> None:  # type: ignore[no-untyped-def]
    request = protos.inference_pb2.MultiInferenceRequest()
    for signature, method in (("regress_x_to_y", "tensorflow/serving/regress"),
                              ("classify_x_to_y", "tensorflow/serving/classify")):
        task = request.tasks.add()
        task.model_spec.name = "default"
        task.model_spec.signature_name = signature
        task.method_name = method
    request.input.example_list.examples.append(example(protos, x=2.0))
    with grpc.insecure_channel(default_server.grpc_address) as channel:
        stub = protos.prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.MultiInference(request, timeout=10)
    assert len(response.results) == 2
    assert response.results[0].regression_result.regressions[0].value == 3.0
    assert response.results[1].classification_result.classifications[0].classes[0].score == 3.0
    for result, signature in zip(response.results, ("regress_x_to_y", "classify_x_to_y"),
                                 strict=True):
        assert result.model_spec.name == "default"
        assert result.model_spec.signature_name == signature
        assert result.model_spec.version.value == 123


# -- REST (cases 7-13) --------------------------------------------------------------------------
def test_case07_rest_classify(default_server: DevServer) -> None:
    response = post(default_server, "/v1/models/default:classify",
                    {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"results": [[["", 3.0]]]}


def test_case08_rest_regress(default_server: DevServer) -> None:
    response = post(default_server, "/v1/models/default:regress",
                    {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]})
    assert response.json() == {"results": [3.0]}


def test_case09_rest_predict_row(default_server: DevServer) -> None:
    response = post(default_server, "/v1/models/default:predict", {"instances": [2.0, 3.0, 4.0]})
    assert response.status_code == 200
    assert response.json() == {"predictions": [3.0, 3.5, 4.0]}
    # rapidjson's PrettyWriter layout, as TF Serving's docs show it
    assert response.text == '{\n    "predictions": [3.0, 3.5, 4.0\n    ]\n}'


def test_case10_rest_predict_columnar(default_server: DevServer) -> None:
    response = post(default_server, "/v1/models/default:predict", {"inputs": [2.0, 3.0, 4.0]})
    assert response.json() == {"outputs": [3.0, 3.5, 4.0]}


def test_case11_rest_status(default_server: DevServer) -> None:
    response = httpx.get(default_server.rest_url + "/v1/models/default")
    assert response.status_code == 200
    assert response.json() == {"model_version_status": [{
        "version": "123", "state": "AVAILABLE",
        "status": {"error_code": "OK", "error_message": ""}}]}


def test_case12_rest_metadata(default_server: DevServer) -> None:
    response = httpx.get(default_server.rest_url + "/v1/models/default/metadata")
    assert response.status_code == 200
    expected = json.loads((TFS / "half_plus_two_model_metadata.json").read_text())
    assert response.json() == expected


def test_case13_monitoring_page(default_server: DevServer) -> None:
    post(default_server, "/v1/models/default:predict", {"instances": [1.0]})
    response = httpx.get(default_server.rest_url + "/monitoring/prometheus/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "# TYPE" in response.text
    assert "# HELP" not in response.text


# -- config files (cases 14-16) -----------------------------------------------------------------
def _good_config(work: Path, three: Path | None = None) -> Path:
    text = (TFS / "good_model_config.txt").read_text()
    text = text.replace("${TEST_HALF_PLUS_TWO_DIR}", str(TFS / "saved_model_half_plus_two_cpu"))
    text = text.replace("${TEST_HALF_PLUS_THREE_DIR}",
                        str(three or TFS / "saved_model_half_plus_three"))
    path = work / "good.config"
    path.write_text(text)
    return path


def test_case14_config_file_with_two_models(tmp_path: Path, protos) -> None:  # type: ignore[no-untyped-def]
    server = DevServer(f"--model_config_file={_good_config(tmp_path)}", workdir=tmp_path, rest=False)
    try:
        server.wait_ready()
        with grpc.insecure_channel(server.grpc_address) as channel:
            stub = protos.prediction_service_pb2_grpc.PredictionServiceStub(channel)
            for name, expected in (("half_plus_two", 3.0), ("half_plus_three", 4.0)):
                request = protos.predict_pb2.PredictRequest()
                request.model_spec.name = name
                request.inputs["x"].CopyFrom(float_input(protos, [2.0], [1]))
                assert list(stub.Predict(request, timeout=10).outputs["y"].float_val) == [expected]
    finally:
        server.stop()


@pytest.mark.parametrize("poll_seconds", [1, 0])
def test_case15_config_polling(tmp_path: Path, protos, poll_seconds: int) -> None:  # type: ignore[no-untyped-def]
    import time

    config = tmp_path / "models.config"
    config.write_text(f"""model_config_list {{ config {{ name: "half_plus_two"
      base_path: "{TFS / 'saved_model_half_plus_two_cpu'}" model_platform: "tensorflow" }} }}""")
    server = DevServer(f"--model_config_file={config}",
                       f"--model_config_file_poll_wait_seconds={poll_seconds}",
                       workdir=tmp_path, rest=False)
    try:
        server.wait_ready()
        config.write_text(f"""model_config_list {{ config {{ name: "half_plus_three"
          base_path: "{TFS / 'saved_model_half_plus_three'}" model_platform: "tensorflow" }} }}""")
        request = protos.predict_pb2.PredictRequest()
        request.model_spec.name = "half_plus_three"
        request.inputs["x"].CopyFrom(float_input(protos, [2.0], [1]))
        deadline = time.monotonic() + (10 if poll_seconds else 4)
        served = None
        with grpc.insecure_channel(server.grpc_address) as channel:
            stub = protos.prediction_service_pb2_grpc.PredictionServiceStub(channel)
            while time.monotonic() < deadline and served is None:
                try:
                    served = list(stub.Predict(request, timeout=5).outputs["y"].float_val)
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.NOT_FOUND
                    time.sleep(0.25)
        assert served == ([4.0] if poll_seconds else None)
    finally:
        server.stop()


def test_case16_bad_config_file(tmp_path: Path) -> None:
    server = DevServer(f"--model_config_file={TFS / 'bad_model_config.txt'}", workdir=tmp_path)
    code = server.proc.wait(timeout=60)
    output = server.output()
    server.stop()
    assert code != 0
    assert "Error parsing text-format tensorflow.serving.ModelServerConfig" in output
    assert "Traceback" not in output


# -- TFLite (case 18) ---------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["saved_model_half_plus_two_tflite",
                                   "saved_model_half_plus_two_tflite_with_sigdef"])
def test_case18_tflite_predict(tmp_path: Path, protos, model: str) -> None:  # type: ignore[no-untyped-def]
    server = DevServer("--model_name=default", f"--model_base_path={TFS / model}",
                       "--prefer_tflite_model=true", workdir=tmp_path)
    try:
        server.wait_ready()
        request = protos.predict_pb2.PredictRequest()
        request.model_spec.name = "default"
        request.inputs["x"].CopyFrom(float_input(protos, [2.0], [1, 1]))
        with grpc.insecure_channel(server.grpc_address) as channel:
            stub = protos.prediction_service_pb2_grpc.PredictionServiceStub(channel)
            response = stub.Predict(request, timeout=10)
        assert list(response.outputs["y"].float_val) == [3.0]
        rest = post(server, "/v1/models/default:predict", {"instances": [[2.0]]})
        assert rest.json() == {"predictions": [[3.0]]}
    finally:
        server.stop()


# -- http_rest_api_handler_test.cc --------------------------------------------------------------
@pytest.mark.parametrize("path,body,expected", [
    ("/v1/models/default:predict", {"instances": [[1.0, 2.0], [3.0, 4.0]]},
     {"predictions": [[2.5, 3.0], [3.5, 4.0]]}),
    ("/v1/models/default/versions/123:predict", {"instances": [1.0, 2.0]},
     {"predictions": [2.5, 3.0]}),
    ("/v1/models/default/labels/Version_Label:predict", {"instances": [1.0, 2.0]},
     {"predictions": [2.5, 3.0]}),
    ("/v1/models/default:predict", {"signature_name": "serving_default", "inputs": [3.0, 4.0]},
     {"outputs": [3.5, 4.0]}),
    ("/v1/models/default:regress", {"signature_name": "regress_x_to_y", "examples": [{"x": 80.0}]},
     {"results": [42.0]}),
    ("/v1/models/default:classify",
     {"signature_name": "classify_x_to_y", "examples": [{"x": 20.0}]}, {"results": [[["", 12.0]]]}),
    ("/v1/models/default/labels/Version_Label:classify",
     {"signature_name": "classify_x_to_y", "examples": [{"x": 10.0}]}, {"results": [[["", 7.0]]]}),
])
def test_handler_success_cases(two_versions: DevServer, path: str, body: object,
                               expected: object) -> None:
    response = post(two_versions, path, body)
    assert response.status_code == 200, response.text
    assert response.json() == expected


@pytest.mark.parametrize("method,path,body,status,message", [
    ("POST", "/v1/models/foo:predict", {"instances": [1.0]}, 404,
     "Servable not found for request: Latest(foo)"),
    ("POST", "/v1/models/foo/versions/50:predict", {"instances": [1.0]}, 404,
     "Servable not found for request: Specific(foo, 50)"),
    ("POST", "/v1/models/default:predict", {"instances": ["x", "y"]}, 400,
     "not of expected type: float"),
    ("POST", "/v1/models/default/labels/nope:predict", {"instances": [1.0]}, 400,
     "Unrecognized servable version label: nope"),
    ("POST", "/v1/models/default:predict", {"signature_name": 100, "instances": [1.0]}, 400,
     "'signature_name' key must be a string value."),
    ("POST", "/v1/models/default:predict", {"signature_name": "X", "instances": [1.0]}, 400,
     'Serving signature name: "X" not found in signature def'),
    ("POST", "/v1/models/default:predict", "", 400, "JSON Parse error: The document is empty"),
    ("POST", "/v1/models/default:predict", "{bad", 400, "JSON Parse error: "),
    ("POST", "/v1/models/default:predict", {"foo": 1}, 400, "Missing 'inputs' or 'instances' key"),
    ("POST", "/v1/models/default:predict", {"instances": [1.0], "inputs": [1.0]}, 400,
     "keys to exist"),
    ("GET", "/v1/models", None, 400, "Missing model name in request."),
    ("GET", "/v1/models/default/versions/HELLO", None, 400,
     "Malformed request: GET /v1/models/default/versions/HELLO"),
    ("GET", "/v1/models/foo", None, 404, "Could not find any versions of model foo"),
    ("GET", "/v1/models/default/versions/7", None, 404, "Could not find version 7 of model default"),
])
def test_handler_error_cases(two_versions: DevServer, method: str, path: str, body: object,
                             status: int, message: str) -> None:
    if method == "POST":
        response = post(two_versions, path, body)  # type: ignore[arg-type]
    else:
        response = httpx.get(two_versions.rest_url + path)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert message in response.json()["error"]


@pytest.mark.parametrize("path", ["/v1/models/default/versions/123",
                                  "/v1/models/default/labels/Version_Label"])
def test_handler_status_by_version_or_label(two_versions: DevServer, path: str) -> None:
    response = httpx.get(two_versions.rest_url + path)
    assert response.json() == {"model_version_status": [{
        "version": "123", "state": "AVAILABLE",
        "status": {"error_code": "OK", "error_message": ""}}]}


def test_handler_metadata_matches_reference(two_versions: DevServer) -> None:
    response = httpx.get(two_versions.rest_url + "/v1/models/default/versions/123/metadata")
    expected = json.loads((TFS / "saved_model_half_plus_two_2_versions_metadata.json").read_text())
    expected["model_spec"]["name"] = "default"
    assert response.json() == expected


def test_paths_outside_v1_are_html_404(two_versions: DevServer) -> None:
    response = httpx.get(two_versions.rest_url + "/healthz")
    assert response.status_code == 404
    assert response.headers["content-type"] == "text/html"
    assert "<TITLE>404 Not Found</TITLE>" in response.text


def test_grpc_unknown_signature_is_failed_precondition(two_versions: DevServer, protos) -> None:  # type: ignore[no-untyped-def]
    request = protos.predict_pb2.PredictRequest()
    request.model_spec.name = "default"
    request.model_spec.signature_name = "X"
    request.inputs["x"].CopyFrom(float_input(protos, [1.0], [1]))
    with grpc.insecure_channel(two_versions.grpc_address) as channel:
        stub = protos.prediction_service_pb2_grpc.PredictionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Predict(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.details() == 'Serving signature key "X" not found.'


def test_grpc_input_mismatch_message(two_versions: DevServer, protos) -> None:  # type: ignore[no-untyped-def]
    request = protos.predict_pb2.PredictRequest()
    request.model_spec.name = "default"
    request.inputs["z"].CopyFrom(float_input(protos, [1.0], [1]))
    with grpc.insecure_channel(two_versions.grpc_address) as channel:
        stub = protos.prediction_service_pb2_grpc.PredictionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Predict(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("input size does not match signature: 1!=1")
    assert "Sent extra: {z}. Missing but required: {x}." in caught.value.details()


def test_case17_grpc_on_a_unix_socket_with_channel_arguments(tmp_path: Path, protos) -> None:  # type: ignore[no-untyped-def]
    """TF Serving's testPredictUDS and its --grpc_channel_arguments: the same gRPC server on
    a UNIX domain socket beside the TCP port, with the operator's server arguments."""
    socket_path = tmp_path / "tfs.sock"
    server = DevServer("--model_name=default",
                       f"--model_base_path={TFS / 'saved_model_half_plus_two_cpu'}",
                       f"--grpc_socket_path={socket_path}",
                       "--grpc_channel_arguments=grpc.max_connection_age_ms=60000,"
                       "grpc.primary_user_agent=tfwarden-test",
                       workdir=tmp_path, rest=False)
    try:
        server.wait_ready()
        assert f"Running gRPC ModelServer at unix:{socket_path}" in server.output()
        request = protos.predict_pb2.PredictRequest()
        request.model_spec.name = "default"
        request.inputs["x"].CopyFrom(float_input(protos, [2.0], [1]))
        for target in (f"unix:{socket_path}", server.grpc_address):
            with grpc.insecure_channel(target) as channel:
                stub = protos.prediction_service_pb2_grpc.PredictionServiceStub(channel)
                response = stub.Predict(request, timeout=10)
            assert list(response.outputs["y"].float_val) == [3.0], target
    finally:
        server.stop()


@pytest.mark.parametrize("value", ["grpc.max_connection_age_ms", "=5", "a=1,,b"])
def test_case18_a_channel_argument_that_is_not_key_value_is_refused(tmp_path: Path,
                                                                     value: str) -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "tfwarden.daemon", "devserver", "--port=0", "--rest_api_port=1",
         f"--model_base_path={tmp_path}", f"--grpc_channel_arguments={value}"],
        capture_output=True, text=True, timeout=60)
    if value == "a=1,,b":
        assert "'b' is not KEY=VALUE" in out.stderr
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "--grpc_channel_arguments" in out.stderr and "KEY=VALUE" in out.stderr
