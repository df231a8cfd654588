"""numpy <-> TensorProto with TF Serving's encoding (typed value fields, not tensor_content)."""

from __future__ import annotations

from typing import Any

import numpy as np

from tfwarden.core.errors import ServingStatus

_FIELDS = {
    np.dtype(np.float32): (1, "float_val"), np.dtype(np.float64): (2, "double_val"),
    np.dtype(np.int32): (3, "int_val"), np.dtype(np.uint8): (4, "int_val"),
    np.dtype(np.int16): (5, "int_val"), np.dtype(np.int8): (6, "int_val"),
    np.dtype(np.int64): (9, "int64_val"), np.dtype(np.bool_): (10, "bool_val"),
    np.dtype(np.uint32): (22, "uint32_val"), np.dtype(np.uint64): (23, "uint64_val"),
}


def to_proto(value: np.ndarray) -> Any:
    from tensorflow.core.framework import tensor_pb2

    proto = tensor_pb2.TensorProto()
    for size in value.shape:
        proto.tensor_shape.dim.add().size = int(size)
    flat = value.reshape(-1)
    if value.dtype == object or value.dtype.kind in "SU":
        proto.dtype = 7
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in flat)
    elif value.dtype == np.float16:
        proto.dtype = 19
        proto.half_val.extend(int(v) for v in flat.view(np.uint16))
    else:
        dtype, field = _FIELDS[value.dtype]
        proto.dtype = dtype
        getattr(proto, field).extend(flat.tolist())
    return proto


def from_proto(proto: Any, alias: str) -> np.ndarray:
    import tensorflow as tf

    try:
        return tf.make_ndarray(proto)
    except (TypeError, ValueError) as exc:
        raise ServingStatus("INVALID_ARGUMENT", f"tensor parsing error: {alias}: {exc}") from None
