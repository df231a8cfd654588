from __future__ import annotations

import pytest

from tfwarden.core.errors import GoldenConversionError
from tfwarden.probes.golden import GoldenRequest
from tfwarden.probes.grpc_predict import build_request, response_json, tensor


def test_row_format_single_input_becomes_a_batched_tensor() -> None:
    golden = GoldenRequest(request={"instances": [[1.0, 2.0], [3.0, 4.0]]})
    request, row = build_request(golden, "m", 7, None, {"x": 1})
    assert row
    x = request.inputs["x"]
    assert x.dtype == 1 and [d.size for d in x.tensor_shape.dim] == [2, 2]
    assert list(x.float_val) == [1.0, 2.0, 3.0, 4.0]
    assert request.model_spec.version.value == 7 and request.model_spec.name == "m"


def test_named_inputs_strings_and_labels() -> None:
    golden = GoldenRequest(request={"signature_name": "sig", "instances": [
        {"a": 1, "b": {"b64": "aGk="}}, {"a": 2, "b": "yo"}]})
    request, _ = build_request(golden, "m", None, "canary", {"a": 9, "b": 7})
    assert request.model_spec.version_label == "canary"
    assert request.model_spec.signature_name == "sig"
    assert list(request.inputs["a"].int64_val) == [1, 2]
    assert list(request.inputs["b"].string_val) == [b"hi", b"yo"]


def test_columnar_and_errors() -> None:
    request, row = build_request(GoldenRequest(request={"inputs": [2.0, 3.0]}), "m", None, None,
                                 {"x": 1})
    assert not row and list(request.inputs["x"].float_val) == [2.0, 3.0]
    with pytest.raises(GoldenConversionError, match="not in the signature"):
        build_request(GoldenRequest(request={"inputs": {"z": [1.0]}}), "m", None, None, {"x": 1})
    with pytest.raises(GoldenConversionError, match="'instances' or 'inputs'"):
        build_request(GoldenRequest(request={"foo": 1}), "m", None, None, {"x": 1})
    with pytest.raises(GoldenConversionError, match="does not fit"):
        tensor(["a"], 1)


def test_response_is_compared_in_the_rest_shape() -> None:
    from tfwarden.serving.tfserving import protos

    pb = protos.load()
    response = pb.predict_pb2.PredictResponse()
    response.outputs["y"].CopyFrom(tensor([[3.0], [3.5]], 1))
    assert response_json(response, row=True) == {"predictions": [[3.0], [3.5]]}
    assert response_json(response, row=False) == {"outputs": [[3.0], [3.5]]}
    response.outputs["z"].CopyFrom(tensor([1, 2], 9))
    assert response_json(response, row=True) == {"predictions": [{"y": [3.0], "z": 1},
                                                                 {"y": [3.5], "z": 2}]}
