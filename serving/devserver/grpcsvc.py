"""gRPC PredictionService and ModelService with TF Serving's status codes and semantics."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from tfwarden.core.errors import ServingStatus
from tfwarden.serving.devserver.core import ServerCore
from tfwarden.serving.devserver.inference import Inference, Served, Target
from tfwarden.serving.devserver.status import CODE_NUMBER
from tfwarden.serving.devserver.tensors import from_proto, to_proto

RELOAD_WAIT_SECONDS = 300.0
RELOAD_FAULT_FILE = "devserver-reload-fault.json"


def _target(spec: Any) -> Target:
    version = spec.version.value if spec.HasField("version") else None
    label = spec.version_label if spec.WhichOneof("version_choice") == "version_label" else None
    return Target(spec.name, version, label or None, spec.signature_name)


def _fill_spec(spec: Any, name: str, served: Served) -> None:
    spec.name = name
    spec.signature_name = served.signature
    spec.version.value = served.version


def _examples(request_input: Any) -> tuple[list[Any], Any]:
    kind = request_input.WhichOneof("kind")
    if kind == "example_list":
        return list(request_input.example_list.examples), None
    if kind == "example_list_with_context":
        lists = request_input.example_list_with_context
        return list(lists.examples), lists.context
    raise ServingStatus("INVALID_ARGUMENT", "Input is empty.")


class _Counted:
    """Counts a call in request_count/request_latency like TF Serving's gRPC entry points."""

    def __init__(self, core: ServerCore) -> None:
        self.core = core

    def call(self, api: str, name: str, context: grpc.ServicerContext,
             fn: Callable[[], Any], count: bool = True) -> Any:
        started = time.monotonic()
        try:
            response = fn()
        except ServingStatus as exc:
            if count:
                self.core.metrics.request(name, exc.code, api, "GRPC", 0)
            context.abort(grpc.StatusCode[exc.code], exc.grpc_message)
        if count:
            self.core.metrics.request(name, "OK", api, "GRPC", (time.monotonic() - started) * 1e6)
        return response


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer, _Counted):
    def __init__(self, core: ServerCore, inference: Inference) -> None:
        _Counted.__init__(self, core)
        self.inference = inference

    def Predict(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        def run() -> Any:
            target = _target(request.model_spec)
            inputs = {alias: from_proto(t, alias) for alias, t in request.inputs.items()}
            served, outputs = self.inference.predict(target, inputs, list(request.output_filter))
            response = predict_pb2.PredictResponse()
            _fill_spec(response.model_spec, target.name, served)
            for alias, value in outputs.items():
                response.outputs[alias].CopyFrom(to_proto(value))
            return response

        return self.call("Predict", request.model_spec.name, context, run)

    def Classify(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        def run() -> Any:
            target = _target(request.model_spec)
            served, results = self.inference.classify(target, *_examples(request.input))
            response = classification_pb2.ClassificationResponse()
            _fill_spec(response.model_spec, target.name, served)
            _fill_classes(response.result, results)
            return response

        return self.call("Classify", request.model_spec.name, context, run)

    def Regress(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        def run() -> Any:
            target = _target(request.model_spec)
            served, values = self.inference.regress(target, *_examples(request.input))
            response = regression_pb2.RegressionResponse()
            _fill_spec(response.model_spec, target.name, served)
            for value in values:
                response.result.regressions.add().value = value
            return response

        return self.call("Regress", request.model_spec.name, context, run)

    def MultiInference(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        def run() -> Any:
            names = {task.model_spec.name for task in request.tasks}
            if not request.tasks:
                raise ServingStatus("INVALID_ARGUMENT", "Inference request must contain tasks")
            if len(names) > 1:
                raise ServingStatus("INVALID_ARGUMENT",
                                    "All ModelSpecs in a MultiInferenceRequest must access the "
                                    "same model name.")
            examples, context_example = _examples(request.input)
            response = inference_pb2.MultiInferenceResponse()
            for task in request.tasks:
                target = _target(task.model_spec)
                result = response.results.add()
                if task.method_name == "tensorflow/serving/classify":
                    served, classes = self.inference.classify(target, examples, context_example)
                    _fill_classes(result.classification_result, classes)
                elif task.method_name == "tensorflow/serving/regress":
                    served, values = self.inference.regress(target, examples, context_example)
                    for value in values:
                        result.regression_result.regressions.add().value = value
                else:
                    raise ServingStatus("UNIMPLEMENTED",
                                        f"Unsupported signature method_name: {task.method_name}")
                _fill_spec(result.model_spec, target.name, served)
            return response

        return self.call("MultiInference", request.tasks[0].model_spec.name if request.tasks
                         else "", context, run, count=False)

    def GetModelMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        def run() -> Any:
            if not request.metadata_field:
                raise ServingStatus("INVALID_ARGUMENT",
                                    "GetModelMetadataRequest must specify at least one "
                                    "metadata_field")
            for field in request.metadata_field:
                if field != "signature_def":
                    raise ServingStatus("INVALID_ARGUMENT",
                                        f"Metadata field {field} is not supported")
            target = _target(request.model_spec)
            version, signatures = self.inference.signatures(target)
            sig_map = get_model_metadata_pb2.SignatureDefMap()
            for key, value in signatures.items():
                sig_map.signature_def[key].CopyFrom(value)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = target.name
            response.model_spec.version.value = version.number
            response.metadata["signature_def"].Pack(sig_map)
            return response

        return self.call("GetModelMetadata", request.model_spec.name, context, run, count=False)


def _fill_classes(result: Any, classes: list[list[tuple[str, float]]]) -> None:
    for row in classes:
        classification = result.classifications.add()
        for label, score in row:
            entry = classification.classes.add()
            entry.label, entry.score = label, score


class ModelService(model_service_pb2_grpc.ModelServiceServicer, _Counted):
    def __init__(self, core: ServerCore, reload_fault: Path | None = None) -> None:
        _Counted.__init__(self, core)
        self.reload_fault = reload_fault
        self._reloads_seen: tuple[float, int] = (0.0, 0)  # (fault file mtime, reloads since)

    def _injected_reload_fault(self) -> None:
        """Fault injection (tests, the chaos suite): while ``devserver-reload-fault.json`` sits
        next to --model_config_file, reloads after the first ``skip`` ones fail with ``code``:
        ``{"code": "UNAVAILABLE", "message": "injected", "skip": 0}``."""
        if self.reload_fault is None:
            return
        try:
            mtime = self.reload_fault.stat().st_mtime
            spec = json.loads(self.reload_fault.read_text())
        except (OSError, ValueError):
            return
        seen = self._reloads_seen[1] if self._reloads_seen[0] == mtime else 0
        self._reloads_seen = (mtime, seen + 1)
        if seen >= int(spec.get("skip", 0)):
            raise ServingStatus(str(spec.get("code", "UNAVAILABLE")),
                                str(spec.get("message", "reload refused (injected fault)")))

    def GetModelStatus(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        def run() -> Any:
            spec = request.model_spec
            version = spec.version.value if spec.HasField("version") else None
            response = get_model_status_pb2.GetModelStatusResponse()
            for entry in self.core.status(spec.name, version):
                status = response.model_version_status.add()
                status.version, status.state = entry.number, int(entry.state)
                status.status.error_code = CODE_NUMBER.get(entry.error_code, 2)
                status.status.error_message = entry.error_message
            return response

        return self.call("GetModelStatus", request.model_spec.name, context, run, count=False)

    def HandleReloadConfigRequest(self, request: Any,  # noqa: N802
                                  context: grpc.ServicerContext) -> Any:
        def run() -> Any:
            self._injected_reload_fault()
            self.core.reload_config(request.config, wait_for_new_models=RELOAD_WAIT_SECONDS)
            return model_management_pb2.ReloadConfigResponse()

        return self.call("HandleReloadConfigRequest", "", context, run, count=False)
