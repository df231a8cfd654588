"""Loaded model versions: TF SavedModels through a TF1 session, TFLite through LiteRT.

A servable exposes its SignatureDefs (for metadata) and runs one signature on named numpy
inputs. SavedModels (TF1 and TF2 exports alike) are loaded with ``tf.compat.v1`` into their own
graph and session and run through session callables, which accept any feed shape the graph
accepts, like the C++ server (Python's ``sess.run`` rejects shape (3,) for a (?, 1)
placeholder; see reference/tfserving.md section 7).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from tfwarden.core.errors import ServingStatus

DEFAULT_SIGNATURE = "serving_default"
WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"


class Servable(Protocol):
    """One loaded model version.

    ``signatures`` maps signature keys to ``SignatureDef`` protos. ``run`` feeds ``inputs`` (by
    signature alias) to ``signature`` and returns the requested outputs (all when
    ``output_filter`` is empty) by alias; raises ServingStatus for bad requests.
    """

    signatures: dict[str, Any]
    runtime: str

    def run(self, signature: str, inputs: dict[str, np.ndarray],
            output_filter: list[str] | None = None) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


def signature_def(signatures: dict[str, Any], name: str, rest: bool = False) -> Any:
    """Look up ``name`` ('' means serving_default) with TF Serving's REST/gRPC error texts."""
    key = name or DEFAULT_SIGNATURE
    if key not in signatures:
        if rest:
            raise ServingStatus("INVALID_ARGUMENT",
                                f'Serving signature name: "{key}" not found in signature def')
        raise ServingStatus("FAILED_PRECONDITION", f'Serving signature key "{key}" not found.')
    return signatures[key]


def check_inputs(sig: Any, inputs: dict[str, np.ndarray]) -> None:
    sent, wanted = set(inputs), set(sig.inputs)
    if sent != wanted:
        raise ServingStatus(
            "INVALID_ARGUMENT",
            f"input size does not match signature: {len(sent)}!={len(wanted)} "
            f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(wanted))}}}). "
            f"Sent extra: {{{','.join(sorted(sent - wanted))}}}. "
            f"Missing but required: {{{','.join(sorted(wanted - sent))}}}.")


def _outputs(sig: Any, output_filter: list[str] | None) -> list[str]:
    if not output_filter:
        return sorted(sig.outputs)
    for alias in output_filter:
        if alias not in sig.outputs:
            raise ServingStatus("INVALID_ARGUMENT",
                                f"output tensor alias not found in signature: {alias} "
                                f"Outputs expected to be in the set {{{','.join(sorted(sig.outputs))}}}.")
    return list(dict.fromkeys(output_filter))


class SessionServable:
    """A SavedModel in its own graph and session."""

    runtime = "TF1"

    def __init__(self, path: Path) -> None:
        import tensorflow as tf

        self._tf = tf
        self._graph = tf.Graph()
        self._session = tf.compat.v1.Session(graph=self._graph)
        with self._graph.as_default():
            meta_graph = tf.compat.v1.saved_model.loader.load(self._session, ["serve"], str(path))
        self.signatures = dict(meta_graph.signature_def)
        self._callables: dict[tuple[str, tuple[str, ...], tuple[str, ...]], Any] = {}
        self._lock = threading.Lock()

    def _callable(self, sig_key: str, feeds: tuple[str, ...], fetches: tuple[str, ...]) -> Any:
        key = (sig_key, feeds, fetches)
        with self._lock:
            fn = self._callables.get(key)
            if fn is None:
                from tensorflow.core.protobuf import config_pb2

                options = config_pb2.CallableOptions(feed=list(feeds), fetch=list(fetches))
                fn = self._session._make_callable_from_options(options)
                self._callables[key] = fn
        return fn

    def run(self, signature: str, inputs: dict[str, np.ndarray],
            output_filter: list[str] | None = None) -> dict[str, np.ndarray]:
        sig = signature_def(self.signatures, signature)
        check_inputs(sig, inputs)
        aliases_in = sorted(inputs)
        aliases_out = _outputs(sig, output_filter)
        fn = self._callable(signature or DEFAULT_SIGNATURE,
                            tuple(sig.inputs[a].name for a in aliases_in),
                            tuple(sig.outputs[a].name for a in aliases_out))
        feeds = [_as_dtype(inputs[a], sig.inputs[a].dtype) for a in aliases_in]
        try:
            values = fn(*feeds)
        except self._tf.errors.OpError as exc:
            raise ServingStatus(_tf_code_name(exc), exc.message) from None
        return dict(zip(aliases_out, values, strict=True))

    def close(self) -> None:
        self._session.close()


class TFLiteServable:
    """``model.tflite`` through ai-edge-litert (builtin ops, one interpreter behind a lock)."""

    runtime = "TFLite"

    def __init__(self, path: Path) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self._interpreter = Interpreter(model_path=str(path))
        self._lock = threading.Lock()
        self._index = {d["name"]: d["index"] for d in
                       self._interpreter.get_input_details() + self._interpreter.get_output_details()}
        self.signatures = _tflite_signatures(path, self._interpreter)

    def run(self, signature: str, inputs: dict[str, np.ndarray],
            output_filter: list[str] | None = None) -> dict[str, np.ndarray]:
        sig = signature_def(self.signatures, signature)
        check_inputs(sig, inputs)
        aliases_out = _outputs(sig, output_filter)
        with self._lock:
            interp = self._interpreter
            shapes = {d["index"]: tuple(d["shape"]) for d in interp.get_input_details()}
            for alias, value in inputs.items():
                index = self._tensor(sig.inputs[alias].name)
                if shapes[index] != np.shape(value):
                    interp.resize_tensor_input(index, list(np.shape(value)), strict=False)
            try:
                interp.allocate_tensors()
                for alias, value in inputs.items():
                    index = self._tensor(sig.inputs[alias].name)
                    interp.set_tensor(index, _as_dtype(value, sig.inputs[alias].dtype))
                interp.invoke()
            except (ValueError, RuntimeError) as exc:
                raise ServingStatus("INVALID_ARGUMENT", str(exc)) from None
            return {a: interp.get_tensor(self._tensor(sig.outputs[a].name)).copy()
                    for a in aliases_out}

    def _tensor(self, name: str) -> int:
        """Interpreter index of a SignatureDef tensor name ("x:0" for LiteRT's "x")."""
        return self._index[name] if name in self._index else self._index[name.rsplit(":", 1)[0]]

    def close(self) -> None:
        pass


def _tflite_signatures(path: Path, interpreter: Any) -> dict[str, Any]:
    """The SignatureDefs TF Serving derives: from ``signature_defs_metadata`` when the model
    carries it, else one ``serving_default`` over the model's input and output tensors."""
    from tensorflow.core.protobuf import meta_graph_pb2

    stored = _signature_defs_metadata(path.read_bytes())
    if stored:
        return {k: meta_graph_pb2.SignatureDef.FromString(v) for k, v in stored.items()}
    sig = meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/predict")
    for details, target in ((interpreter.get_input_details(), sig.inputs),
                            (interpreter.get_output_details(), sig.outputs)):
        for d in details:
            info = target[d["name"]]
            # converted TF2 models name tensors like "serving_default_x:0" already
            info.name = d["name"] if ":" in d["name"] else f"{d['name']}:0"
            info.dtype = _tf_dtype(d["dtype"])
            for size in d["shape_signature"] if len(d["shape_signature"]) else d["shape"]:
                info.tensor_shape.dim.add().size = int(size)
    return {DEFAULT_SIGNATURE: sig}


def _signature_defs_metadata(model_bytes: bytes) -> dict[str, bytes]:
    from ai_edge_litert import schema_py_generated as schema
    from flatbuffers import flexbuffers

    model = schema.Model.GetRootAsModel(model_bytes, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() == b"signature_defs_metadata":
            raw = model.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
            mapping = flexbuffers.GetRoot(raw).AsMap
            return {key.AsKey: bytes(value.AsStringBytes if value.IsString else value.AsBlob)
                    for key, value in zip(mapping.Keys, mapping.Values, strict=True)}
    return {}


def _tf_dtype(np_dtype: Any) -> int:
    import tensorflow as tf

    return int(tf.as_dtype(np_dtype).as_datatype_enum)


def _as_dtype(value: np.ndarray, dtype_enum: int) -> np.ndarray:
    import tensorflow as tf

    dtype = tf.dtypes.as_dtype(dtype_enum)
    if dtype == tf.string:
        return np.asarray(value, dtype=object)
    return np.asarray(value, dtype=dtype.as_numpy_dtype)


def _tf_code_name(exc: Any) -> str:
    import grpc

    for code in grpc.StatusCode:
        if code.value[0] == exc.error_code:
            return str(code.name)
    return "UNKNOWN"


def load_servable(version_dir: Path, prefer_tflite: bool) -> Servable:
    """Load a version directory the way TF Serving would."""
    if prefer_tflite and (version_dir / "model.tflite").is_file():
        return TFLiteServable(version_dir / "model.tflite")
    return SessionServable(version_dir)


def is_loadable(version_dir: Path, prefer_tflite: bool) -> bool:
    """A version directory is complete enough to try (not a half-copied one)."""
    if prefer_tflite and (version_dir / "model.tflite").is_file():
        return True
    return (version_dir / "saved_model.pb").is_file() or (version_dir / "saved_model.pbtxt").is_file()
