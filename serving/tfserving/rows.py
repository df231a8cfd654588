"""Feature rows <-> TF Serving's REST JSON, given a model's signature.

A model's inputs (``InputSpec``, from GetModelMetadata) define its feature rows: each input
contributes ``width`` values (``x[0]``, ``x[1]``... for a vector input), in the signature's input
order. ``rows_from_predict_body`` reads a REST predict body (``instances`` or ``inputs``, b64
included) and ``rows_from_samples`` a batch of feature rows, checking count, shape and type
(``CaptureError`` names the place); ``rows_to_instances`` and ``flatten_prediction`` go the
other way, for predictions tfwarden requests itself.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tfwarden.core.errors import CaptureError

NUMERIC = {1: "float", 2: "double", 3: "int32", 4: "uint8", 5: "int16", 6: "int8", 9: "int64",
           19: "half", 22: "uint32", 23: "uint64"}
STRING, BOOL = 7, 10
Row = list[float | str]


@dataclass(frozen=True)
class InputSpec:
    """One signature input: dtype enum and shape (-1 for unknown sizes, batch first)."""

    name: str
    dtype: int
    shape: tuple[int, ...]

    @property
    def per_row(self) -> tuple[int, ...]:
        return self.shape[1:]

    @property
    def width(self) -> int:
        """Scalars per row (unknown inner sizes count as 1)."""
        width = 1
        for size in self.per_row:
            width *= size if size > 0 else 1
        return width

    def feature_names(self) -> list[str]:
        if not self.per_row or self.width == 1:
            return [self.name]
        return [f"{self.name}[{i}]" for i in range(self.width)]


def _flatten(value: Any, out: list[Any]) -> list[int]:
    if isinstance(value, list):
        shapes = [_flatten(v, out) for v in value]
        if any(s != shapes[0] for s in shapes):
            raise CaptureError("ragged list (items of different shapes)")
        return [len(value), *(shapes[0] if shapes else [])]
    out.append(value)
    return []


def _scalar(value: Any, dtype: int, where: str) -> float | str:
    if dtype == STRING:
        if isinstance(value, dict) and set(value) == {"b64"}:
            try:
                return base64.b64decode(value["b64"], validate=True).decode("utf-8", "replace")
            except (binascii.Error, ValueError):
                raise CaptureError(f"{where}: invalid base64") from None
        if isinstance(value, str):
            return value
        raise CaptureError(f"{where}: expected a string, got {type(value).__name__}")
    if dtype == BOOL:
        if isinstance(value, bool):
            return float(value)
        raise CaptureError(f"{where}: expected true/false, got {value!r}")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CaptureError(f"{where}: expected a number ({NUMERIC.get(dtype, dtype)}), "
                           f"got {value!r}"[:200])
    if isinstance(value, float) and not math.isfinite(value):
        return value
    return float(value)


def _row_values(value: Any, spec: InputSpec, where: str) -> list[float | str]:
    flat: list[Any] = []
    shape = _flatten(value, flat)
    expected = list(spec.per_row)
    if len(shape) != len(expected) or any(e not in (-1, s) for e, s in zip(expected, shape,
                                                                           strict=False)):
        if not (expected in ([], [1]) and shape in ([], [1])):
            raise CaptureError(f"{where}: shape {shape} does not fit the signature's "
                               f"{[-1, *expected]} for input '{spec.name}'")
    return [_scalar(v, spec.dtype, f"{where}[{i}]" if len(flat) > 1 else where)
            for i, v in enumerate(flat)]


def rows_from_predict_body(body: Any, specs: Sequence[InputSpec]) -> list[list[float | str]]:
    """Feature rows (in ``feature_names`` order) of a TF Serving REST predict body."""
    if not isinstance(body, dict):
        raise CaptureError("body: expected a JSON object with 'instances' or 'inputs'")
    by_name = {s.name: s for s in specs}
    if ("instances" in body) == ("inputs" in body):
        raise CaptureError("body: expected exactly one of 'instances' or 'inputs'")
    if "instances" in body:
        instances = body["instances"]
        if not isinstance(instances, list) or not instances:
            raise CaptureError("instances: expected a non-empty list")
        rows = []
        for i, item in enumerate(instances):
            if len(specs) == 1 and not (isinstance(item, dict) and set(item) != {"b64"}):
                rows.append(_row_values(item, specs[0], f"instances[{i}]"))
                continue
            if not isinstance(item, dict):
                raise CaptureError(f"instances[{i}]: expected an object with inputs "
                                   f"{sorted(by_name)}")
            if set(item) != set(by_name):
                raise CaptureError(f"instances[{i}]: inputs {sorted(item)} do not match the "
                                   f"signature's {sorted(by_name)}")
            rows.append([v for s in specs for v in _row_values(item[s.name], s,
                                                                f"instances[{i}].{s.name}")])
        return rows
    inputs = body["inputs"]
    columns = inputs if isinstance(inputs, dict) and set(inputs) != {"b64"} else \
        {specs[0].name: inputs} if len(specs) == 1 else None
    if columns is None or set(columns) != set(by_name):
        raise CaptureError(f"inputs: expected the signature's inputs {sorted(by_name)}")
    batches = {}
    for spec in specs:
        batch = columns[spec.name]
        if not isinstance(batch, list) or not batch:
            raise CaptureError(f"inputs.{spec.name}: expected a non-empty batch (list)")
        batches[spec.name] = batch
    sizes = {len(b) for b in batches.values()}
    if len(sizes) != 1:
        raise CaptureError(f"inputs: batch sizes differ between inputs ({sorted(sizes)})")
    return [[v for s in specs for v in _row_values(batches[s.name][i], s,
                                                   f"inputs.{s.name}[{i}]")]
            for i in range(sizes.pop())]


def rows_from_samples(body: Any, specs: Sequence[InputSpec]) -> tuple[list[list[float | str]],
                                                                        int | None]:
    """Rows and version of ``{"version": 7, "features": [...], "rows": [[...], ...]}``."""
    if not isinstance(body, dict) or not isinstance(body.get("rows"), list) or not body["rows"]:
        raise CaptureError("body: expected {\"rows\": [[...], ...]} with at least one row")
    names = [n for s in specs for n in s.feature_names()]
    features = body.get("features", names)
    if features != names:
        raise CaptureError(f"features: expected {names}, got {features}"[:300])
    version = body.get("version")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
        raise CaptureError("version: expected an integer")
    kinds = [s.dtype for s in specs for _ in s.feature_names()]
    numeric = not any(kind in (STRING, BOOL) for kind in kinds)
    rows: list[list[float | str]] = []
    for i, row in enumerate(body["rows"]):
        if not isinstance(row, list) or len(row) != len(names):
            raise CaptureError(f"rows[{i}]: expected {len(names)} values ({', '.join(names)})"[:300])
        if numeric and all(type(v) is float or type(v) is int for v in row):
            rows.append([float(v) for v in row])  # the common case, as _scalar would convert it
            continue
        rows.append([_scalar(v, kind, f"rows[{i}][{j}]")
                     for j, (v, kind) in enumerate(zip(row, kinds, strict=True))])
    return rows, version



def _nest(values: list[Any], shape: Sequence[int]) -> Any:
    if not shape:
        return values[0]
    step = len(values) // max(1, shape[0])
    return [_nest(values[i * step:(i + 1) * step], shape[1:]) for i in range(shape[0])]


def rows_to_instances(rows: Sequence[Sequence[float | str]],
                      specs: Sequence[InputSpec]) -> list[Any]:
    """The inverse of ``rows_from_predict_body``: REST ``instances`` for feature rows (unknown
    inner sizes are taken as 1, as ``InputSpec.feature_names`` does)."""
    instances: list[Any] = []
    for row in rows:
        parts: dict[str, Any] = {}
        offset = 0
        for spec in specs:
            width = spec.width
            values = [v if spec.dtype != STRING else str(v) for v in row[offset:offset + width]]
            offset += width
            shape = [s if s > 0 else 1 for s in spec.per_row]
            parts[spec.name] = _nest(values, shape)
        instances.append(parts[specs[0].name] if len(specs) == 1 else parts)
    return instances


def flatten_prediction(prediction: Any) -> tuple[list[str], list[float | str]]:
    """Output names and flat values of one row of a REST ``predictions`` list."""
    if isinstance(prediction, dict):
        names: list[str] = []
        values: list[float | str] = []
        for key in sorted(prediction):
            sub_names, sub_values = flatten_prediction(prediction[key])
            names += [key if n == "output" else f"{key}{n[len('output'):]}" for n in sub_names]
            values += sub_values
        return names, values
    flat: list[Any] = []
    _flatten(prediction, flat)
    values = [v if isinstance(v, str) else float(v) for v in flat]
    if len(values) == 1:
        return ["output"], values
    return [f"output[{i}]" for i in range(len(values))], values
