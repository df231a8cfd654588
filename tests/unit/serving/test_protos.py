"""The daemon's proto loader keeps TensorFlow's runtime out of the process.

Each check runs in a fresh interpreter: once the stand-in ``tensorflow`` package is registered,
real TensorFlow cannot be imported in that process, so it must never happen inside pytest's.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers import REPO


def run_python(code: str) -> dict[str, object]:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_protos_load_without_the_tensorflow_runtime() -> None:
    out = run_python("""
import json, sys
from tfwarden.serving.tfserving import protos
p = protos.load()
req = p.predict_pb2.PredictRequest()
req.model_spec.name = "half_plus_two"
req.model_spec.version.value = 123
req.inputs["x"].dtype = p.types_pb2.DT_FLOAT
req.inputs["x"].tensor_shape.dim.add().size = 1
req.inputs["x"].float_val.append(2.0)
back = p.predict_pb2.PredictRequest.FromString(req.SerializeToString())
cfg = p.model_server_config_pb2.ModelServerConfig()
m = cfg.model_config_list.config.add(); m.name = "m"; m.base_path = "/models/m"
m.version_labels["stable"] = 1
print(json.dumps({
    "runtime": "tensorflow.python" in sys.modules,
    "heavy": [n for n in ("keras", "alibi_detect", "tensorflow_model_optimization") if n in sys.modules],
    "version": back.model_spec.version.value,
    "value": back.inputs["x"].float_val[0],
    "stubs": [hasattr(p.prediction_service_pb2_grpc, "PredictionServiceStub"),
              hasattr(p.model_service_pb2_grpc, "ModelServiceStub")],
    "labels": dict(cfg.model_config_list.config[0].version_labels),
}))
""")
    assert out == {"runtime": False, "heavy": [], "version": 123, "value": 2.0,
                   "stubs": [True, True], "labels": {"stable": 1}}


def test_stub_refuses_tensorflow_attributes_with_a_clear_error() -> None:
    out = run_python("""
import json
from tfwarden.serving.tfserving import protos
protos.load()
import tensorflow as tf
try:
    tf.constant(1)
    message = None
except ImportError as exc:
    message = str(exc)
print(json.dumps({"message": message}))
""")
    assert "not available in the tfwarden daemon" in str(out["message"])


def test_real_tensorflow_is_used_when_already_imported() -> None:
    out = run_python("""
import json, sys
import tensorflow.core.framework.tensor_pb2  # noqa: F401 - runs the real package __init__
from tfwarden.serving.tfserving import protos
p = protos.load()
import tensorflow as tf
print(json.dumps({"real": hasattr(tf, "constant"), "ok": p.predict_pb2 is not None}))
""")
    assert out == {"real": True, "ok": True}
