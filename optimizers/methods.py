"""The optimization methods, what each needs and produces (lean: no TensorFlow here)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    name: str
    output: str  # "tflite": model.tflite in the version directory; "savedmodel"
    worker: str  # job kind: "convert" or "tfmot"
    keras: bool = False  # needs the Keras source (assets.extra/model.keras)
    data: str | None = None  # "representative", "captured" or "train"
    summary: str = ""


METHODS = {m.name: m for m in (
    Method("float32", "tflite", "convert", summary="TFLite without quantization (edge baseline)"),
    Method("dynamic", "tflite", "convert",
           summary="TFLite dynamic-range quantization (int8 weights, float activations)"),
    Method("float16", "tflite", "convert", summary="TFLite with float16 weights"),
    Method("int8", "tflite", "convert", data="representative",
           summary="TFLite full int8 with a representative dataset (float or int8 I/O)"),
    Method("recalibrate", "tflite", "convert", data="captured",
           summary="TFLite full int8 calibrated on recently captured live inputs"),
    Method("keras_float16", "savedmodel", "convert", keras=True,
           summary="SavedModel with float16 weights, lean export"),
    Method("keras_int8", "savedmodel", "convert", keras=True,
           summary="SavedModel with Keras weight-only int8 quantization, lean export"),
    Method("prune", "savedmodel", "tfmot", keras=True, data="train",
           summary="magnitude pruning (polynomial decay) with fine-tuning, stripped"),
    Method("prune_oneshot", "savedmodel", "tfmot", keras=True,
           summary="one-shot magnitude pruning without data (the gate must judge it)"),
    Method("cluster", "savedmodel", "tfmot", keras=True, data="train",
           summary="weight clustering (k-means++ centroids) with fine-tuning, stripped"),
)}
