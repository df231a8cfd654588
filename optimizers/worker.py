"""Optimizer worker processes: one job per process, JSON job on stdin, JSON result on stdout.

Run as ``python -m tfwarden.optimizers.worker``; never imported by the daemon. It answers framed
JSON jobs (``core.workers.serve``), one per process as the runner uses it. Job kinds:

- ``convert`` (TensorFlow, Keras 3): TFLite post-training quantization of a SavedModel
  (``float16``, ``dynamic``, ``int8``/``recalibrate`` with a representative dataset) and lean
  SavedModels from the Keras source (``keras_float16``, ``keras_int8``);
- ``tfmot`` (``TF_USE_LEGACY_KERAS=1`` set by the runner before TensorFlow is imported; tf_keras):
  ``prune`` (polynomial decay + fine-tune + strip), ``prune_oneshot`` (magnitude, no data) and
  ``cluster`` (k-means++ centroids + fine-tune + strip); the Keras 3 source's weights are carried
  over by rebuilding the architecture in tf_keras;
- ``predict_savedmodel`` (TensorFlow) and ``predict_tflite`` (ai-edge-litert only, no
  TensorFlow): outputs on the golden inputs, single-request latency, and the comparison with the
  source's outputs when given.

Every result carries ``peak_rss_bytes`` (VmHWM). Errors are answers: ``{"error": "..."}``.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tfwarden.core.errors import JobError
from tfwarden.core.workers import serve

Array = NDArray[Any]
SIGNATURE = "serving_default"
KERAS_SOURCE = Path("assets.extra") / "model.keras"


# -- data ---------------------------------------------------------------------------------------
def load_array(path: str | None, key: str = "x", required: bool = True) -> Array | None:
    """``.npy`` (the array), ``.npz`` (``key``, or its only array) or ``.csv`` (header row)."""
    if path is None:
        if required:
            raise JobError(f"no {key} data given")
        return None
    file = Path(path)
    if not file.is_file():
        raise JobError(f"{file}: no such file")
    if file.suffix == ".npy":
        return np.asarray(np.load(file, allow_pickle=False)) if key == "x" else None
    if file.suffix == ".npz":
        arrays = np.load(file, allow_pickle=False)
        if key in arrays.files:
            return np.asarray(arrays[key])
        if key == "x" and len(arrays.files) == 1:
            return np.asarray(arrays[arrays.files[0]])
        if required:
            raise JobError(f"{file}: no array {key!r} (has {arrays.files})")
        return None
    if file.suffix == ".csv":
        return np.loadtxt(file, delimiter=",", skiprows=1, ndmin=2) if key == "x" else None
    if file.suffix == ".jsonl":  # golden requests: {"request": {"instances": [...]}}
        if key != "x":
            return None
        rows = []
        for line in file.read_text().splitlines():
            if line.strip():
                rows.extend(json.loads(line)["request"]["instances"])
        return np.asarray(rows)
    raise JobError(f"{file}: expected .npy, .npz, .csv or .jsonl")


def _signature_input(loaded: Any) -> tuple[str, Any, str]:
    fn = loaded.signatures[SIGNATURE]
    inputs = fn.structured_input_signature[1]
    if len(inputs) != 1:
        raise JobError(f"only single-input models can be optimized; the signature has inputs "
                       f"{sorted(inputs)}")
    name, spec = next(iter(inputs.items()))
    outputs = sorted(fn.structured_outputs)
    return name, spec, outputs[0]


def _cast(x: Array, dtype: Any) -> Array:
    return np.asarray(x, dtype=np.dtype(dtype))


# -- convert ------------------------------------------------------------------------------------
def convert(job: dict[str, Any]) -> dict[str, Any]:
    import tensorflow as tf

    method, source, out = job["method"], Path(job["source"]), Path(job["out"])
    params = job.get("params", {})
    out.mkdir(parents=True, exist_ok=True)
    if method in ("keras_float16", "keras_int8"):
        return _keras_export(job, method, out)
    loaded = tf.saved_model.load(str(source))
    name, spec, _ = _signature_input(loaded)
    # from the concrete function: the converter freezes the variables into constants
    # (from_saved_model kept them as resource variables, READ_VARIABLE failing at run time)
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [loaded.signatures[SIGNATURE]], loaded)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    report: dict[str, Any] = {"method": method}
    if method == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif method in ("int8", "recalibrate"):
        data = load_array(job.get("representative"))
        assert data is not None
        samples = min(len(data), int(params.get("samples", 300)))
        dtype = spec.dtype.as_numpy_dtype

        def representative() -> Any:
            for row in data[:samples]:
                yield {name: _cast(row[None, ...], dtype)}

        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if params.get("io", "float") == "int8":
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
        report["representative_samples"] = samples
        report["io"] = params.get("io", "float")
    elif method == "float32":
        converter.optimizations = []
    elif method != "dynamic":
        raise JobError(f"method {method!r} is not a conversion")
    started = time.monotonic()
    model = converter.convert()
    (out / "model.tflite").write_bytes(model)
    report["convert_seconds"] = round(time.monotonic() - started, 3)
    return report


def _lean_export(model: Any, path: Path, input_name: str, shape: tuple[Any, ...],
                 dtype: Any) -> None:
    """A SavedModel with only the model's weights (no optimizer slots, no Keras duplicates)."""
    import tensorflow as tf

    spec = tf.TensorSpec([None, *shape[1:]], dtype, name=input_name)

    @tf.function(input_signature=[spec])  # type: ignore[untyped-decorator]
    def serve(x: Any) -> dict[str, Any]:
        return {"output_0": tf.cast(model(x, training=False), tf.float32)}

    module = tf.Module()
    # Track the backing tf.Variables themselves, not the Keras model: stock TF Serving (and the
    # devserver) load SavedModels with the TF1 loader, which cannot restore variables reached
    # only through a Keras 3 model ("Could not find variable"); Keras's own export() tracks
    # them twice (keras-team/keras#23553).
    module.weights_list = [v.value if isinstance(getattr(v, "value", None), tf.Variable) else v
                           for v in model.variables]
    module.serve = serve
    tf.saved_model.save(module, str(path), signatures={SIGNATURE: serve})


def _keras_source(job: dict[str, Any]) -> Path:
    path = Path(job["keras_source"]) if job.get("keras_source") else \
        Path(job["source"]) / KERAS_SOURCE
    if not path.is_file():
        raise JobError(f"method {job['method']} needs the Keras source model at {path} "
                       f"(save it as {KERAS_SOURCE} in the version directory)")
    return path


def _keras_export(job: dict[str, Any], method: str, out: Path) -> dict[str, Any]:
    import keras

    source = keras.models.load_model(_keras_source(job), compile=False)
    config = source.get_config()
    if method == "keras_float16":
        for layer in config.get("layers", []):
            if layer["class_name"] != "InputLayer":
                layer["config"]["dtype"] = "float16"
    rebuilt = source.__class__.from_config(config)  # no optimizer state
    weights = source.get_weights()
    rebuilt.set_weights([w.astype(np.float16) for w in weights] if method == "keras_float16"
                        else weights)
    if method == "keras_int8":
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "InputLayer does not have a quantize method"
            rebuilt.quantize("int8")
    input_name = source.inputs[0].name.split(":")[0]
    _lean_export(rebuilt, out, input_name, tuple(source.inputs[0].shape), "float32")
    shutil.copytree(_keras_source(job).parent, out / "assets.extra", dirs_exist_ok=True)
    (out / KERAS_SOURCE).unlink()  # the source stays with the source version only
    return {"method": method}


# -- tfmot --------------------------------------------------------------------------------------
def _rebuild_in_tf_keras(model: Any) -> Any:
    """The Keras 3 Sequential architecture in tf_keras, with its weights (tfmot needs tf_keras)."""
    import tf_keras

    if model.__class__.__name__ != "Sequential":
        raise JobError("pruning and clustering support Sequential Keras models")
    layers = [tf_keras.Input(shape=tuple(model.inputs[0].shape[1:]),
                             name=model.inputs[0].name.split(":")[0])]
    dropped = ("dtype", "quantization_config", "kernel_initializer", "bias_initializer",
               "kernel_regularizer", "bias_regularizer", "activity_regularizer",
               "kernel_constraint", "bias_constraint", "seed")
    for layer in model.layers:
        cls = getattr(tf_keras.layers, layer.__class__.__name__, None)
        if cls is None:
            raise JobError(f"layer {layer.__class__.__name__} has no tf_keras equivalent")
        config = {k: v for k, v in layer.get_config().items() if k not in dropped}
        layers.append(cls(**config))
    rebuilt = tf_keras.Sequential(layers)
    rebuilt.set_weights(model.get_weights())
    return rebuilt


def tfmot_job(job: dict[str, Any]) -> dict[str, Any]:
    if os.environ.get("TF_USE_LEGACY_KERAS") != "1":
        raise JobError("tfmot jobs need TF_USE_LEGACY_KERAS=1 set before TensorFlow is imported")
    import keras
    import tensorflow as tf
    import tensorflow_model_optimization as tfmot
    import tf_keras

    method, out, params = job["method"], Path(job["out"]), job.get("params", {})
    tf_keras.utils.set_random_seed(int(params.get("seed", 0)))  # reproducible fine-tuning
    source = keras.models.load_model(_keras_source(job), compile=False)
    model = _rebuild_in_tf_keras(source)
    report: dict[str, Any] = {"method": method}
    started = time.monotonic()
    if method == "prune_oneshot":
        sparsity = float(params.get("sparsity", 0.5))
        schedule = tfmot.sparsity.keras.ConstantSparsity(sparsity, begin_step=0, frequency=1)
        pruned = tfmot.sparsity.keras.prune_low_magnitude(model, pruning_schedule=schedule)
        step = tfmot.sparsity.keras.UpdatePruningStep()
        step.set_model(pruned)
        step.on_train_begin()
        step.on_train_batch_begin(0)
        # one forward pass in training mode computes and applies the magnitude masks
        shape = tuple(1 if d is None else d for d in pruned.inputs[0].shape)
        pruned(np.zeros(shape, np.float32), training=True)
        stripped = tfmot.sparsity.keras.strip_pruning(pruned)
        report["sparsity"] = sparsity
    else:
        x = load_array(job.get("train"), "x")
        y = load_array(job.get("train"), "y")
        assert x is not None and y is not None
        epochs = max(2, int(params.get("epochs", 8)))
        batch = int(params.get("batch_size", 64))
        loss = params.get("loss", "sparse_categorical_crossentropy")
        if method == "prune":
            sparsity = float(params.get("sparsity", 0.5))
            # reach the target sparsity after two thirds of the steps; the rest recovers
            end = max(1, 2 * epochs * int(np.ceil(len(x) / batch)) // 3)
            schedule = tfmot.sparsity.keras.PolynomialDecay(  # masks updated ~10 times
                0.0, sparsity, begin_step=0, end_step=end, frequency=max(1, end // 10))
            wrapped = tfmot.sparsity.keras.prune_low_magnitude(model, pruning_schedule=schedule)
            callbacks = [tfmot.sparsity.keras.UpdatePruningStep()]
            report["sparsity"] = sparsity
        elif method == "cluster":
            clusters = int(params.get("clusters", 16))
            wrapped = tfmot.clustering.keras.cluster_weights(
                model, number_of_clusters=clusters,
                cluster_centroids_init=tfmot.clustering.keras.CentroidInitialization.KMEANS_PLUS_PLUS)
            if wrapped is None:
                raise JobError("tfmot returned no clustered model (a Keras 3 model slipped in?)")
            callbacks = []
            report["clusters"] = clusters
        else:
            raise JobError(f"method {method!r} is not a tfmot method")
        wrapped.compile(tf.keras.optimizers.Adam(float(params.get("learning_rate", 3e-4))), loss)
        wrapped.fit(x, y, epochs=epochs, batch_size=batch, verbose=0, callbacks=callbacks)
        report["fine_tune_epochs"] = epochs
        stripped = tfmot.sparsity.keras.strip_pruning(wrapped) if method == "prune" else \
            tfmot.clustering.keras.strip_clustering(wrapped)
    weights = stripped.get_weights()
    report["zero_weights"] = round(float(sum((w == 0).sum() for w in weights) /
                                         max(1, sum(w.size for w in weights))), 4)
    report["tfmot_seconds"] = round(time.monotonic() - started, 3)
    input_name = source.inputs[0].name.split(":")[0]
    _lean_export(stripped, out, input_name, tuple(source.inputs[0].shape), "float32")
    return report


# -- predict and compare ------------------------------------------------------------------------
def _latency(call: Any, x: Array, runs: int) -> dict[str, float]:
    samples = []
    for i in range(runs):
        row = x[i % len(x)][None, ...]
        started = time.perf_counter()
        call(row)
        samples.append((time.perf_counter() - started) * 1000)
    ordered = sorted(samples[min(10, runs // 10):])  # the first calls warm up
    return {"p50_ms": round(ordered[len(ordered) // 2], 4),
            "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 4)}


def predict_savedmodel(job: dict[str, Any]) -> dict[str, Any]:
    import tensorflow as tf

    loaded = tf.saved_model.load(job["model"])
    name, spec, output = _signature_input(loaded)
    fn = loaded.signatures[SIGNATURE]
    x = _cast(load_array(job["inputs"]), spec.dtype.as_numpy_dtype)  # type: ignore[arg-type]

    def call(batch: Array) -> Array:
        return np.asarray(fn(**{name: tf.constant(batch)})[output].numpy())

    outputs = np.concatenate([call(x[i:i + 256]) for i in range(0, len(x), 256)])
    return _finish(job, outputs, _latency(call, x, int(job.get("latency_runs", 200))))


def predict_tflite(job: dict[str, Any]) -> dict[str, Any]:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(Path(job["model"]) / "model.tflite"))
    runner = interpreter.get_signature_runner(SIGNATURE)
    details = runner.get_input_details()
    if len(details) != 1:
        raise JobError(f"only single-input models can be validated; inputs {sorted(details)}")
    name, info = next(iter(details.items()))
    x = load_array(job["inputs"])
    assert x is not None
    scale, zero = info.get("quantization", (0.0, 0))
    out_details = runner.get_output_details()
    out_name = sorted(out_details)[0]
    out_scale, out_zero = out_details[out_name].get("quantization", (0.0, 0))

    def call(batch: Array) -> Array:
        feed = np.round(batch / scale + zero) if info["dtype"] == np.int8 and scale else batch
        result = runner(**{name: feed.astype(info["dtype"])})[out_name]
        if out_details[out_name]["dtype"] == np.int8 and out_scale:
            return np.asarray((result.astype(np.float32) - out_zero) * out_scale)
        return np.asarray(result, dtype=np.float32)

    outputs = np.concatenate([call(x[i:i + 1]) for i in range(len(x))])
    return _finish(job, outputs, _latency(call, x, int(job.get("latency_runs", 200))))


def _finish(job: dict[str, Any], outputs: Array, latency: dict[str, float]) -> dict[str, Any]:
    np.save(job["out"], outputs.astype(np.float32), allow_pickle=False)
    result: dict[str, Any] = {"latency": latency, "rows": int(len(outputs))}
    if job.get("compare_to"):
        reference = np.load(job["compare_to"], allow_pickle=False)
        result["agreement"] = compare(reference, outputs, load_array(job.get("labels"), "y",
                                                                      required=False))
    return result


def compare(source: Array, candidate: Array,
            labels: Array | None) -> dict[str, Any]:
    """Candidate vs source outputs (and labels): what the validation gate judges."""
    source = source.reshape(len(source), -1).astype(np.float64)
    candidate = candidate.reshape(len(candidate), -1).astype(np.float64)
    if source.shape != candidate.shape:
        raise JobError(f"candidate outputs have shape {candidate.shape}, source {source.shape}")
    error = np.abs(source - candidate)
    metrics: dict[str, Any] = {"max_abs_error": float(error.max()),
                               "mean_abs_error": float(error.mean())}
    if source.shape[1] > 1:  # scores: classes agree?
        metrics["top1_agreement"] = float((source.argmax(1) == candidate.argmax(1)).mean())
        if labels is not None:
            labels = labels.reshape(-1)
            metrics["source_accuracy"] = float((source.argmax(1) == labels).mean())
            metrics["candidate_accuracy"] = float((candidate.argmax(1) == labels).mean())
    elif labels is not None:
        labels = labels.reshape(-1).astype(np.float64)
        metrics["source_mae"] = float(np.abs(source[:, 0] - labels).mean())
        metrics["candidate_mae"] = float(np.abs(candidate[:, 0] - labels).mean())
    return metrics


def sizes(path: Path) -> dict[str, int]:
    """Bytes on disk and gzip-compressed bytes of a model directory's model files."""
    files = [p for p in sorted(path.rglob("*")) if p.is_file() and "assets.extra" not in p.parts]
    raw = sum(p.stat().st_size for p in files)
    compressed = sum(len(gzip.compress(p.read_bytes(), 9)) for p in files)
    return {"bytes": raw, "gzip_bytes": compressed}


JOBS = {"convert": convert, "tfmot": tfmot_job, "predict_savedmodel": predict_savedmodel,
        "predict_tflite": predict_tflite}


def _peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def handle(job: dict[str, Any]) -> dict[str, Any]:
    """One job (its ``kind`` picks the function); errors are answers, with the peak RSS."""
    try:
        kind = job.get("kind")
        if kind not in JOBS:
            raise JobError(f"kind: expected one of {sorted(JOBS)}, got {kind!r}")
        result = JOBS[kind](job)
        if job.get("size_of"):
            result["size"] = sizes(Path(job["size_of"]))
        result["peak_rss_bytes"] = _peak_rss()
        result["tensorflow_loaded"] = "tensorflow.python" in sys.modules
        result["legacy_keras"] = os.environ.get("TF_USE_LEGACY_KERAS") == "1"
        return result
    except JobError as exc:
        return {"error": str(exc), "peak_rss_bytes": _peak_rss()}
    except Exception as exc:  # a converter or tfmot failure: one line for the report
        detail = traceback.format_exc(limit=2).strip().splitlines()[-1]
        return {"error": f"{type(exc).__name__}: {exc}"[:500] or detail,
                "peak_rss_bytes": _peak_rss()}


def main() -> int:
    return serve(handle, "optimizer worker")


if __name__ == "__main__":
    sys.exit(main())
