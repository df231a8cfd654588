"""Predict, Classify, Regress and MultiInference on a resolved version (shared by REST and gRPC).

Each call resolves the version, applies that version's fault file (latency, errors, leak), runs
the signature and records ``runtime_latency``. Request counting and ``request_latency`` are the
front ends' job because REST and gRPC count differently.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from tfwarden.core.errors import ServingStatus
from tfwarden.serving.devserver.core import ServerCore, Version
from tfwarden.serving.devserver.servables import signature_def


@dataclass(frozen=True)
class Target:
    """What a request addresses: a model and optionally a version or a label."""

    name: str
    version: int | None = None
    label: str | None = None
    signature: str = ""


@dataclass(frozen=True)
class Served:
    version: int
    signature: str


def _example_pb2() -> Any:
    from tensorflow.core.example import example_pb2

    return example_pb2


class Inference:
    def __init__(self, core: ServerCore) -> None:
        self.core = core

    def signatures(self, target: Target) -> tuple[Version, dict[str, Any]]:
        with self.core.acquire(target.name, target.version, target.label) as (version, servable):
            return version, servable.signatures

    def predict(self, target: Target, inputs: dict[str, np.ndarray],
                output_filter: list[str] | None = None,
                rest: bool = False) -> tuple[Served, dict[str, np.ndarray]]:
        with self.core.acquire(target.name, target.version, target.label) as (version, servable):
            signature = target.signature or "serving_default"
            signature_def(servable.signatures, signature, rest=rest)
            outputs = self._run(version, servable, target.name, "Predict", signature, inputs,
                                output_filter)
        return Served(version.number, signature), outputs

    def classify(self, target: Target, examples: list[Any],
                 context: Any = None) -> tuple[Served, list[list[tuple[str, float]]]]:
        with self.core.acquire(target.name, target.version, target.label) as (version, servable):
            return self._classify(target, version, servable, examples, context)

    def _classify(self, target: Target, version: Version, servable: Any, examples: list[Any],
                  context: Any) -> tuple[Served, list[list[tuple[str, float]]]]:
        signature = target.signature or "serving_default"
        sig = signature_def(servable.signatures, signature)
        alias = self._example_input(sig, "classification")
        if "classes" not in sig.outputs and "scores" not in sig.outputs:
            raise ServingStatus("INVALID_ARGUMENT",
                                "Expected classification signature outputs to contain at least "
                                "one of: classes, scores")
        batch = self._serialize(examples, context)
        outputs = self._run(version, servable, target.name, "Classify", signature, {alias: batch},
                            [o for o in ("classes", "scores") if o in sig.outputs])
        scores = outputs.get("scores")
        classes = outputs.get("classes")
        n = len(examples)
        scores = None if scores is None else np.reshape(scores, (n, -1))
        classes = None if classes is None else np.reshape(classes, (n, -1))
        width = (scores if scores is not None else classes).shape[1]  # type: ignore[union-attr]
        results = []
        for i in range(n):
            row = []
            for j in range(width):
                label = classes[i, j] if classes is not None else b""
                label = label.decode("utf-8", "replace") if isinstance(label, bytes) else str(label)
                row.append((label, float(scores[i, j]) if scores is not None else 0.0))
            results.append(row)
        self.core.metrics.examples(target.name, n)
        return Served(version.number, signature), results

    def regress(self, target: Target, examples: list[Any],
                context: Any = None) -> tuple[Served, list[float]]:
        with self.core.acquire(target.name, target.version, target.label) as (version, servable):
            return self._regress(target, version, servable, examples, context)

    def _regress(self, target: Target, version: Version, servable: Any, examples: list[Any],
                 context: Any) -> tuple[Served, list[float]]:
        signature = target.signature or "serving_default"
        sig = signature_def(servable.signatures, signature)
        alias = self._example_input(sig, "regression")
        if "outputs" not in sig.outputs:
            raise ServingStatus("INVALID_ARGUMENT",
                                "No output tensor found in regression signature")
        batch = self._serialize(examples, context)
        outputs = self._run(version, servable, target.name, "Regress", signature, {alias: batch},
                            ["outputs"])
        values = np.reshape(outputs["outputs"], (len(examples), -1))
        if values.shape[1] != 1:
            raise ServingStatus("INVALID_ARGUMENT",
                                f"Expected output Tensor shape to be [{len(examples)}] or "
                                f"[{len(examples)}, 1] but got {list(outputs['outputs'].shape)}")
        self.core.metrics.examples(target.name, len(examples))
        return Served(version.number, signature), [float(v) for v in values[:, 0]]

    def _run(self, version: Version, servable: Any, model: str, api: str, signature: str,
             inputs: dict[str, np.ndarray], output_filter: list[str] | None) -> dict[str, np.ndarray]:
        if version.faults is not None:
            version.faults.before_inference()
        started = time.monotonic()
        outputs = servable.run(signature, inputs, output_filter)
        self.core.metrics.runtime(model, api, servable.runtime, (time.monotonic() - started) * 1e6)
        if version.faults is not None:
            outputs = version.faults.perturb(outputs)
        return outputs

    @staticmethod
    def _example_input(sig: Any, kind: str) -> str:
        if len(sig.inputs) != 1:
            raise ServingStatus("INVALID_ARGUMENT",
                                f"Expected one input Tensor in {kind} signature, got "
                                f"{len(sig.inputs)}")
        alias = next(iter(sig.inputs))
        if sig.inputs[alias].dtype != 7:  # DT_STRING: serialized tf.Example
            raise ServingStatus("INVALID_ARGUMENT",
                                f"Expected input Tensor of {kind} signature to be of type "
                                "string (serialized tf.Example)")
        return alias

    @staticmethod
    def _serialize(examples: list[Any], context: Any) -> np.ndarray:
        if not examples:
            raise ServingStatus("INVALID_ARGUMENT", "Input is empty.")
        out = []
        for example in examples:
            if context is not None:
                merged = _example_pb2().Example()
                merged.CopyFrom(context)
                merged.MergeFrom(example)
                example = merged
            out.append(example.SerializeToString())
        return np.array(out, dtype=object)
