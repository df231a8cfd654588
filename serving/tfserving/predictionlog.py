"""PredictionLog TFRecord files: TF Serving warmup files and Google-style request logs.

TFRecord framing (``uint64 length, uint32 masked crc32c(length), data, uint32 masked
crc32c(data)``, little-endian) is read here with google-crc32c checking both checksums; each record
is a ``tensorflow.serving.PredictionLog`` parsed with the lean protos (no TensorFlow runtime).
``rows_from_log`` turns the logged request into feature rows in ``serving.tfserving.rows`` order:
PredictLog inputs (TensorProto, typed value fields or ``tensor_content``) and the tf.Example
lists of ClassifyLog / RegressLog.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import google_crc32c

from tfwarden.core.errors import PredictionLogError
from tfwarden.serving.tfserving import protos
from tfwarden.serving.tfserving.rows import InputSpec

_MASK_DELTA = 0xA282EAD8
# DataType enum -> (struct code, TensorProto value field)
_DTYPES: dict[int, tuple[str, str]] = {
    1: ("f", "float_val"), 2: ("d", "double_val"), 3: ("i", "int_val"), 4: ("B", "int_val"),
    5: ("h", "int_val"), 6: ("b", "int_val"), 9: ("q", "int64_val"), 10: ("?", "bool_val"),
    17: ("H", "int_val"), 22: ("I", "uint32_val"), 23: ("Q", "uint64_val"),
    7: ("", "string_val"),
}


def _masked_crc(data: bytes) -> int:
    crc = int(google_crc32c.value(data))
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def read_tfrecords(path: Path) -> Iterator[bytes]:
    """The records of one TFRecord file (uncompressed), checksums verified."""
    with path.open("rb") as handle:
        index = 0
        while True:
            header = handle.read(12)
            if not header:
                return
            if len(header) < 12:
                raise PredictionLogError(f"{path}: record {index}: truncated header")
            length, length_crc = struct.unpack("<QI", header)
            if _masked_crc(header[:8]) != length_crc:
                raise PredictionLogError(f"{path}: record {index}: corrupt length (bad checksum); "
                                         f"not a TFRecord file?")
            data = handle.read(length)
            footer = handle.read(4)
            if len(data) < length or len(footer) < 4:
                raise PredictionLogError(f"{path}: record {index}: truncated data")
            if _masked_crc(data) != struct.unpack("<I", footer)[0]:
                raise PredictionLogError(f"{path}: record {index}: corrupt data (bad checksum)")
            yield data
            index += 1


def read_prediction_logs(path: Path) -> Iterator[Any]:
    """PredictionLog messages of a file, or of every regular file of a directory (sorted)."""
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    pb = protos.load()
    for file in files:
        for index, record in enumerate(read_tfrecords(file)):
            log = pb.prediction_log_pb2.PredictionLog()
            try:
                log.ParseFromString(record)
            except Exception as exc:  # protobuf's DecodeError
                raise PredictionLogError(f"{file}: record {index}: not a PredictionLog "
                                         f"({exc})") from None
            yield log


def tensor_values(tensor: Any, where: str) -> tuple[list[int], list[float | str]]:
    """Shape and flat values of a TensorProto (strings decoded as UTF-8)."""
    shape = [d.size for d in tensor.tensor_shape.dim]
    if tensor.dtype not in _DTYPES:
        raise PredictionLogError(f"{where}: unsupported dtype {tensor.dtype}")
    code, field = _DTYPES[tensor.dtype]
    count = 1
    for size in shape:
        count *= size
    if tensor.tensor_content and code:
        width = struct.calcsize(code)
        if len(tensor.tensor_content) != count * width:
            raise PredictionLogError(f"{where}: tensor_content has {len(tensor.tensor_content)} "
                                     f"bytes for shape {shape}")
        raw = struct.unpack(f"<{count}{code}", tensor.tensor_content)
        values: list[float | str] = [float(v) for v in raw]
    elif code == "":
        values = [v.decode("utf-8", "replace") for v in tensor.string_val]
    else:
        values = [float(v) for v in getattr(tensor, field)]
    if len(values) == 1 and count > 1:
        values = values * count  # TF's compact form: one value fills the tensor
    if len(values) != count:
        raise PredictionLogError(f"{where}: {len(values)} values for shape {shape}")
    return shape, values


def _example_value(feature: Any) -> list[float | str]:
    kind = feature.WhichOneof("kind")
    if kind == "float_list":
        return [float(v) for v in feature.float_list.value]
    if kind == "int64_list":
        return [float(v) for v in feature.int64_list.value]
    if kind == "bytes_list":
        return [v.decode("utf-8", "replace") for v in feature.bytes_list.value]
    return []


def rows_from_log(log: Any) -> tuple[list[str], list[list[float | str]]]:
    """Feature names (``serving.tfserving.rows`` order) and rows of one logged request."""
    kind = log.WhichOneof("log_type")
    if kind == "predict_log":
        inputs = log.predict_log.request.inputs
        names: list[str] = []
        columns: list[list[list[float | str]]] = []
        batch = None
        for name in sorted(inputs):
            shape, values = tensor_values(inputs[name], f"predict_log.inputs[{name}]")
            rows = shape[0] if shape else 1
            if batch is not None and rows != batch:
                raise PredictionLogError(f"predict_log: inputs have batch sizes {batch} and {rows}")
            batch = rows
            width = len(values) // rows if rows else 0
            names += InputSpec(name, 1, (-1, *shape[1:])).feature_names()
            columns.append([values[i * width:(i + 1) * width] for i in range(rows)])
        rows_out = [[v for column in columns for v in column[i]] for i in range(batch or 0)]
        return names, rows_out
    if kind in ("classify_log", "regress_log"):
        request = getattr(log, kind).request
        examples = request.input.example_list.examples
        if not examples:
            raise PredictionLogError(f"{kind}: only example_list inputs are supported")
        names = sorted(examples[0].features.feature)
        rows_out = []
        for example in examples:
            features = example.features.feature
            row: list[float | str] = []
            for name in names:
                values = _example_value(features[name]) if name in features else []
                if len(values) != 1:
                    raise PredictionLogError(f"{kind}: feature {name!r} has {len(values)} values; "
                                             f"expected one per example")
                row += values
            rows_out.append(row)
        return names, rows_out
    raise PredictionLogError(f"unsupported PredictionLog entry {kind!r} (expected predict_log, "
                             f"classify_log or regress_log)")


def read_rows(path: Path, limit: int) -> tuple[list[str], list[list[float | str]]]:
    """Up to ``limit`` feature rows from PredictionLog files; all entries must share features."""
    features: list[str] | None = None
    rows: list[list[float | str]] = []
    for log in read_prediction_logs(path):
        names, got = rows_from_log(log)
        if features is None:
            features = names
        elif names != features:
            raise PredictionLogError(f"{path}: entries log different inputs ({features} then "
                                     f"{names})")
        rows += got
        if len(rows) >= limit:
            break
    if features is None:
        raise PredictionLogError(f"{path}: no PredictionLog entries")
    return features, rows[:limit]
