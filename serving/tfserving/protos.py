"""Load TF Serving's generated protobuf and gRPC modules without the TensorFlow runtime.

``tensorflow-serving-api``'s ``*_pb2`` modules import ``tensorflow.core.framework.*_pb2``, and a
plain import of those runs ``tensorflow/__init__.py`` first (about 4 s and 700 MB). The generated
modules only need protobuf, so :func:`load` registers a stand-in ``tensorflow`` package whose
``__path__`` is the real one: the ``tensorflow.core...`` sub-packages then import normally and the
runtime never loads (about 0.2 s, tens of MB). The stand-in refuses attribute access with a clear
error, so code in the daemon that reaches for ``tf.*`` fails loudly instead of half-working.

In a process that has already imported real TensorFlow (the devserver, workers) :func:`load`
uses it as it is.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from dataclasses import dataclass
from typing import Any

from tfwarden.core.errors import ProtoLoadError

STUB_MARKER = "__tfwarden_proto_stub__"


class _TensorFlowStub(types.ModuleType):
    """A ``tensorflow`` package object that only serves as a namespace for the pb2 modules."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise ImportError(
            f"tensorflow.{name} is not available in the tfwarden daemon: only TF Serving's protobuf "
            "modules are loaded here (serving.tfserving.protos); TensorFlow work belongs in a worker"
        )


@dataclass(frozen=True)
class ServingProtos:
    """The generated modules the daemon uses, by their usual names."""

    model_pb2: Any
    predict_pb2: Any
    classification_pb2: Any
    regression_pb2: Any
    inference_pb2: Any
    get_model_metadata_pb2: Any
    get_model_status_pb2: Any
    model_management_pb2: Any
    prediction_log_pb2: Any
    prediction_service_pb2_grpc: Any
    model_service_pb2_grpc: Any
    model_server_config_pb2: Any
    tensor_pb2: Any
    types_pb2: Any


_loaded: ServingProtos | None = None


def runtime_loaded() -> bool:
    """True if the real TensorFlow runtime is imported in this process."""
    return "tensorflow.python" in sys.modules


def _install_stub() -> None:
    existing = sys.modules.get("tensorflow")
    if existing is not None:
        return  # real TensorFlow (or our stub) is already there
    spec = importlib.util.find_spec("tensorflow")
    if spec is None or not spec.submodule_search_locations:
        raise ProtoLoadError("the tensorflow package is not installed (needed for its .proto modules)")
    stub = _TensorFlowStub("tensorflow", "stand-in package: protobuf modules only")
    stub.__path__ = list(spec.submodule_search_locations)
    stub.__spec__ = spec
    stub.__file__ = spec.origin
    setattr(stub, STUB_MARKER, True)
    sys.modules["tensorflow"] = stub


def load() -> ServingProtos:
    """Import (once) and return TF Serving's protobuf and gRPC modules."""
    global _loaded
    if _loaded is not None:
        return _loaded
    _install_stub()
    names = {
        "model_pb2": "tensorflow_serving.apis.model_pb2",
        "predict_pb2": "tensorflow_serving.apis.predict_pb2",
        "classification_pb2": "tensorflow_serving.apis.classification_pb2",
        "regression_pb2": "tensorflow_serving.apis.regression_pb2",
        "inference_pb2": "tensorflow_serving.apis.inference_pb2",
        "get_model_metadata_pb2": "tensorflow_serving.apis.get_model_metadata_pb2",
        "get_model_status_pb2": "tensorflow_serving.apis.get_model_status_pb2",
        "model_management_pb2": "tensorflow_serving.apis.model_management_pb2",
        "prediction_log_pb2": "tensorflow_serving.apis.prediction_log_pb2",
        "prediction_service_pb2_grpc": "tensorflow_serving.apis.prediction_service_pb2_grpc",
        "model_service_pb2_grpc": "tensorflow_serving.apis.model_service_pb2_grpc",
        "model_server_config_pb2": "tensorflow_serving.config.model_server_config_pb2",
        "tensor_pb2": "tensorflow.core.framework.tensor_pb2",
        "types_pb2": "tensorflow.core.framework.types_pb2",
    }
    try:
        modules = {key: importlib.import_module(module) for key, module in names.items()}
    except ImportError as exc:
        raise ProtoLoadError(f"cannot load TF Serving protos: {exc}") from exc
    _loaded = ServingProtos(**modules)
    return _loaded
