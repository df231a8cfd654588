"""TF Serving's REST JSON (``util/json_tensor.cc``): requests to tensors, results to JSON.

Behaviour reproduced: the row (``instances``) and columnar (``inputs``) formats with their
checks and error messages, ``{"b64": ...}`` binary values, NaN/Infinity tokens, numbers printed
like ``absl::StrCat`` (shortest round-tripping float, ``.0`` added to whole numbers), string
outputs named ``*_bytes`` written as b64, and rapidjson's PrettyWriter layout (4-space indent,
single-line arrays for row-format items and classify/regress results).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from tfwarden.core.errors import ServingStatus

DT_NAMES = {1: "float", 2: "double", 3: "int32", 4: "uint8", 5: "int16", 6: "int8", 7: "string",
            9: "int64", 10: "bool", 19: "half", 22: "uint32", 23: "uint64"}
NUMPY = {1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 5: np.int16, 6: np.int8,
         7: object, 9: np.int64, 10: np.bool_, 19: np.float16, 22: np.uint32, 23: np.uint64}
FLOAT_MAX = float(np.finfo(np.float32).max)


def invalid(message: str) -> ServingStatus:
    return ServingStatus("INVALID_ARGUMENT", message)


# -- writing -------------------------------------------------------------------------------
def format_float(value: float, single: bool = True) -> str:
    """A float the way TF Serving's WriteDecimal prints it."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "-Infinity" if value < 0 else "Infinity"
    text = f"{value:g}"
    parsed = float(np.float32(text)) if single else float(text)
    if parsed != value:
        text = f"{value:.9g}" if single else f"{value:.17g}"
    if "." not in text and "e" not in text:
        text += ".0"
    return text


class PrettyWriter:
    """rapidjson's PrettyWriter (4 spaces), including its single-line-array format option."""

    def __init__(self) -> None:
        self.out: list[str] = []
        self.stack: list[list[Any]] = []  # [is_array, value_count]
        self.single_line = False

    def _prefix(self) -> None:
        if not self.stack:
            return
        level = self.stack[-1]
        if level[0]:
            if self.single_line:
                if level[1]:
                    self.out.append(", ")
            else:
                self.out.append(",\n" if level[1] else "\n")
                self.out.append("    " * len(self.stack))
        elif level[1] % 2 == 0:
            self.out.append(",\n" if level[1] else "\n")
            self.out.append("    " * len(self.stack))
        else:
            self.out.append(": ")
        level[1] += 1

    def raw(self, token: str) -> None:
        self._prefix()
        self.out.append(token)

    def key(self, name: str) -> None:
        self.raw(json.dumps(name, ensure_ascii=False))

    def start(self, array: bool) -> None:
        self._prefix()
        self.out.append("[" if array else "{")
        self.stack.append([array, 0])

    def end(self) -> None:
        array, count = self.stack.pop()
        if count and not (array and self.single_line):
            self.out.append("\n" + "    " * len(self.stack))
        self.out.append("]" if array else "}")

    def text(self) -> str:
        return "".join(self.out)


def _scalar(value: Any, as_bytes: bool) -> str:
    if isinstance(value, bytes | np.bytes_):
        if as_bytes:
            return '{"b64": ' + json.dumps(base64.b64encode(bytes(value)).decode()) + "}"
        return json.dumps(bytes(value).decode("utf-8", "replace"), ensure_ascii=False)
    if isinstance(value, np.bool_ | bool):
        return "true" if value else "false"
    if isinstance(value, np.floating):
        return format_float(float(value), single=value.dtype != np.float64)
    if isinstance(value, float):
        return format_float(value, single=False)
    if isinstance(value, np.integer | int):
        return str(int(value))
    return json.dumps(str(value), ensure_ascii=False)


def _write_tensor(writer: PrettyWriter, value: np.ndarray, as_bytes: bool) -> None:
    if value.ndim == 0:
        token = _scalar(value[()], as_bytes)
        if token.startswith('{"b64"'):
            writer.start(array=False)
            writer.key("b64")
            writer.raw(json.dumps(base64.b64encode(bytes(value[()])).decode()))
            writer.end()
        else:
            writer.raw(token)
        return
    writer.start(array=True)
    for item in value:
        _write_tensor(writer, np.asarray(item, dtype=value.dtype), as_bytes)
    writer.end()


def _is_bytes(name: str, value: np.ndarray) -> bool:
    return value.dtype == object and name.endswith("_bytes")


def predict_response(outputs: dict[str, np.ndarray], row_format: bool) -> str:
    names = sorted(outputs)
    writer = PrettyWriter()
    writer.start(array=False)
    if row_format:
        batch = -1
        for name in names:
            if outputs[name].ndim == 0:
                raise invalid(f"Tensor name: {name} has no shape information ")
            if batch >= 0 and outputs[name].shape[0] != batch:
                raise invalid(f"Tensor name: {name} has inconsistent batch size: "
                              f"{outputs[name].shape[0]} expecting: {batch}")
            batch = outputs[name].shape[0]
        writer.key("predictions")
        writer.start(array=True)
        for item in range(batch):
            if len(names) > 1:
                writer.start(array=False)
            writer.single_line = True
            for name in names:
                if len(names) > 1:
                    writer.key(name)
                _write_tensor(writer, outputs[name][item], _is_bytes(name, outputs[name]))
            writer.single_line = False
            if len(names) > 1:
                writer.end()
        writer.end()
    else:
        writer.key("outputs")
        if len(names) > 1:
            writer.start(array=False)
        for name in names:
            if len(names) > 1:
                writer.key(name)
            _write_tensor(writer, outputs[name], _is_bytes(name, outputs[name]))
        if len(names) > 1:
            writer.end()
    writer.end()
    return writer.text()


def classify_response(results: list[list[tuple[str, float]]]) -> str:
    writer = PrettyWriter()
    writer.start(array=False)
    writer.key("results")
    writer.start(array=True)
    for classes in results:
        writer.single_line = True
        writer.start(array=True)
        for label, score in classes:
            writer.start(array=True)
            writer.raw(json.dumps(label, ensure_ascii=False))
            writer.raw(format_float(score))
            writer.end()
        writer.end()
        writer.single_line = False
    writer.end()
    writer.end()
    return writer.text()


def regress_response(values: list[float]) -> str:
    writer = PrettyWriter()
    writer.start(array=False)
    writer.key("results")
    writer.single_line = True
    writer.start(array=True)
    for value in values:
        writer.raw(format_float(value))
    writer.end()
    writer.single_line = False
    writer.end()
    return writer.text()


def error_response(message: str) -> str:
    writer = PrettyWriter()
    writer.start(array=False)
    writer.key("error")
    writer.raw(json.dumps(message, ensure_ascii=False))
    writer.end()
    return writer.text()


# -- reading -------------------------------------------------------------------------------
_RAPIDJSON_MESSAGES = {
    "Expecting value": "Invalid value.",
    "Extra data": "The document root must not be followed by other values.",
    "Expecting property name enclosed in double quotes": "Missing a name for object member.",
    "Expecting ':' delimiter": "Missing a colon after a name of object member.",
    "Unterminated string starting at": "Missing a closing quotation mark in string.",
    "Invalid control character at": "Invalid encoding in string.",
}


def parse_document(body: bytes) -> dict[str, Any]:
    """Parse a request body; errors read like rapidjson's."""
    if not body:
        raise invalid("JSON Parse error: The document is empty")
    try:
        doc = json.loads(body)
    except UnicodeDecodeError:
        raise invalid("JSON Parse error: Invalid encoding in string. at offset: 0") from None
    except json.JSONDecodeError as exc:
        message = _RAPIDJSON_MESSAGES.get(exc.msg)
        if exc.msg == "Expecting ',' delimiter":
            opener = _innermost_open(exc.doc, exc.pos)
            message = ("Missing a comma or ']' after an array element." if opener == "["
                       else "Missing a comma or '}' after an object member.")
        raise invalid(f"JSON Parse error: {message or exc.msg} at offset: {exc.pos}") from None
    if not isinstance(doc, dict):
        raise invalid(f"JSON Value: {_to_string(doc)} Is not object")
    return doc


def _innermost_open(text: str, pos: int) -> str:
    depth: list[str] = []
    in_string = escaped = False
    for ch in text[:pos]:
        if in_string:
            escaped, in_string = (not escaped and ch == "\\"), in_string and (escaped or ch != '"')
            continue
        if ch == '"':
            in_string = True
        elif ch in "[{":
            depth.append(ch)
        elif ch in "]}" and depth:
            depth.pop()
    return depth[-1] if depth else ""


def signature_name(doc: dict[str, Any]) -> str:
    if "signature_name" not in doc:
        return ""
    if not isinstance(doc["signature_name"], str):
        raise invalid(f"JSON Value: {_to_string(doc)} not formatted correctly. "
                      "'signature_name' key must be a string value.")
    return str(doc["signature_name"])


def _to_string(value: Any) -> str:
    """JsonValueToString: rapidjson's pretty print of the value (for error messages)."""
    writer = PrettyWriter()
    _write_json(writer, value)
    return writer.text()


def _write_json(writer: PrettyWriter, value: Any) -> None:
    if isinstance(value, dict):
        writer.start(array=False)
        for key, item in value.items():
            writer.key(key)
            _write_json(writer, item)
        writer.end()
    elif isinstance(value, list):
        writer.start(array=True)
        for item in value:
            _write_json(writer, item)
        writer.end()
    elif isinstance(value, bool) or value is None:
        writer.raw(json.dumps(value))
    elif isinstance(value, float):
        writer.raw(format_float(value, single=False))
    else:
        writer.raw(json.dumps(value, ensure_ascii=False))


def _type_name(value: Any) -> str:
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    names: dict[type, str] = {dict: "Object", list: "Array", str: "String"}
    return names.get(type(value), "Number")


def _type_error(value: Any, dtype: int) -> ServingStatus:
    return invalid(f"JSON Value: {_to_string(value)} Type: {_type_name(value)} is not of expected "
                   f"type: {DT_NAMES.get(dtype, str(dtype))}")


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _decode_b64(value: Any) -> bytes:
    if not _is_b64(value):
        raise invalid(f"JSON Value: {_to_string(value)} not formatted correctly for base64 data")
    text = value["b64"]
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_"
                                if ("-" in text or "_" in text) else None, validate=True)
    except (binascii.Error, ValueError):
        raise invalid("Unable to base64 decode") from None


def _convert(value: Any, dtype: int) -> Any:
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if dtype in (1, 2, 19):
        if not is_number:
            raise _type_error(value, dtype)
        limit_int = (1 << (24 if dtype == 1 else 53)) - 1
        lossy = (isinstance(value, int) and abs(value) > limit_int) or (
            dtype == 1 and isinstance(value, float) and math.isfinite(value)
            and abs(value) > FLOAT_MAX)
        if lossy:
            target = "float" if dtype in (1, 19) else "double"
            raise invalid(f"Cannot convert JSON value: {_to_string(value)} to {target} "
                          "without loss of precision.")
        return float(value)
    if dtype in (3, 4, 5, 6):
        if not (isinstance(value, int) and not isinstance(value, bool) and -2**31 <= value < 2**31):
            raise _type_error(value, dtype)
        return value
    if dtype == 9:
        if not (isinstance(value, int) and not isinstance(value, bool) and -2**63 <= value < 2**63):
            raise _type_error(value, dtype)
        return value
    if dtype in (22, 23):
        bits = 32 if dtype == 22 else 64
        if not (isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**bits):
            raise _type_error(value, dtype)
        return value
    if dtype == 10:
        if not isinstance(value, bool):
            raise _type_error(value, dtype)
        return value
    if dtype == 7:
        if not isinstance(value, str):
            raise _type_error(value, dtype)
        return value.encode()
    raise ServingStatus("UNIMPLEMENTED",
                        f"Conversion of JSON Value: {_to_string(value)} to type: {dtype}")


def _shape(value: Any) -> list[int]:
    dims = []
    while isinstance(value, list):
        dims.append(len(value))
        if not value:
            break
        value = value[0]
    return dims


def _fill(value: Any, level: int, dims: list[int], dtype: int, out: list[Any]) -> None:
    if not isinstance(value, list):
        if level != len(dims):
            raise invalid(f"JSON Value: {_to_string(value)} found at incorrect level: {level + 1} "
                          f"in the JSON DOM. Expected at level: {len(dims)}")
        if isinstance(value, dict):
            if dtype != 7:
                raise _type_error(value, dtype)
            out.append(_decode_b64(value))
        else:
            out.append(_convert(value, dtype))
        return
    if level >= len(dims):
        raise invalid(f"Encountered list at unexpected level: {level} expected < {len(dims)}")
    if len(value) != dims[level]:
        raise invalid(f"Encountered list at unexpected size: {len(value)} at level: {level} "
                      f"expected size: {dims[level]}")
    for item in value:
        _fill(item, level + 1, dims, dtype, out)


def _tensor(value: Any, dtype: int) -> np.ndarray:
    dims = _shape(value)
    flat: list[Any] = []
    _fill(value, 0, dims, dtype, flat)
    return np.array(flat, dtype=NUMPY.get(dtype, object)).reshape(dims)


def predict_inputs(doc: dict[str, Any],
                   input_types: Callable[[], dict[str, int]]) -> tuple[dict[str, np.ndarray], bool]:
    """Tensors of a predict body and whether it used the row format. ``input_types`` gives the
    signature's input aliases -> dtype enum (it resolves the model, so it is called once the
    signature name is known, as TF Serving does)."""
    types = input_types()
    if not types:
        raise invalid(f"Failed to get input map for signature: {signature_name(doc) or 'DEFAULT'}")
    has_instances, has_inputs = "instances" in doc, "inputs" in doc
    if has_instances and has_inputs:
        raise invalid(f"JSON Value: {_to_string(doc)} Not formatted correctly expecting only one "
                      "of 'inputs' or 'instances' keys to exist ")
    if has_instances:
        instances = doc["instances"]
        if not isinstance(instances, list):
            raise invalid(f"JSON Value: {_to_string(doc)} Excepting 'instances' to be an list/array")
        if not instances:
            raise invalid(f"JSON Value: {_to_string(doc)} No values in 'instances' array")
        return _from_instances(instances, types), True
    if has_inputs:
        return _from_inputs(doc["inputs"], types), False
    raise invalid("Missing 'inputs' or 'instances' key")


def _from_instances(instances: list[Any], types: dict[str, int]) -> dict[str, np.ndarray]:
    def is_object(v: Any) -> bool:
        return isinstance(v, dict) and not _is_b64(v)

    if not isinstance(instances[0], dict) and len(types) > 1:
        raise invalid("instances is a plain list, but expecting list of objects as multiple input "
                      "tensors required as per tensorinfo_map")
    objects = is_object(instances[0])
    columns: dict[str, list[np.ndarray]] = {}

    def add(name: str, item: Any, index: int, with_key: bool) -> None:
        if name not in types:
            raise invalid(f"JSON object: does not have named input: {name}")
        tensor = _tensor(item, types[name])
        previous = columns.get(name)
        if previous:
            first = previous[0]
            if first.size != tensor.size:
                raise invalid(f"Expecting tensor size: {first.size} but got: {tensor.size}")
            if first.shape != tensor.shape:
                raise invalid(f"Expecting shape [{','.join(map(str, first.shape))}] but got: "
                              f"[{','.join(map(str, tensor.shape))}]")
        columns.setdefault(name, []).append(tensor)

    for index, element in enumerate(instances):
        if objects:
            if not is_object(element):
                raise invalid(f"Expecting object but got list at item {index} of input list")
            for name, item in element.items():
                try:
                    add(name, item, index, True)
                except ServingStatus as exc:
                    raise invalid(f"Failed to process element: {index} key: {name} of 'instances' "
                                  f"list. Error: {exc.code}: {exc.message}") from None
            if set(element) != set(types):
                raise invalid(f"Failed to process element: {index} of 'instances' list. JSON "
                              f"object: {_to_string(element)} keys must be equal to: "
                              f"{','.join(sorted(types))}")
        else:
            if is_object(element):
                raise invalid(f"Expecting value/list but got object at item {index} of input list")
            name = sorted(types)[0]
            try:
                add(name, element, index, False)
            except ServingStatus as exc:
                raise invalid(f"Failed to process element: {index} of 'instances' list. "
                              f"Error: {exc.code}: {exc.message}") from None
    return {name: np.stack(parts) for name, parts in columns.items()}


def _from_inputs(value: Any, types: dict[str, int]) -> dict[str, np.ndarray]:
    if not isinstance(value, dict) or _is_b64(value):
        if len(types) > 1:
            raise invalid("inputs is a plain value/list, but expecting an object as multiple input "
                          "tensors required as per tensorinfo_map")
        name = next(iter(types))
        return {name: _tensor(value, types[name])}
    tensors = {}
    for name in sorted(types):
        if name not in value:
            raise invalid(f"Missing named input: {name} in 'inputs' object.")
        tensors[name] = _tensor(value[name], types[name])
    return tensors


def examples_from_json(doc: dict[str, Any], verb: str) -> tuple[list[Any], Any]:
    """tf.Examples (and the optional context) of a classify/regress body."""
    from tensorflow.core.example import example_pb2

    context = None
    if "context" in doc:
        context = _example(doc["context"], example_pb2)
    if "examples" not in doc:
        raise invalid(f"JSON Value: {_to_string(doc)} When method is {verb}, key 'examples' is "
                      "expected and was not found")
    examples = doc["examples"]
    if not isinstance(examples, list):
        raise invalid(f"JSON Value: {_to_string(doc)} Expecting 'examples' value to be an list/array")
    if not examples:
        raise invalid(f"JSON Value: {_to_string(doc)} 'examples' value is an empty array")
    return [_example(e, example_pb2) for e in examples], context


def _example(value: Any, example_pb2: Any) -> Any:
    if not isinstance(value, dict):
        raise invalid(f"Example must be JSON object but got JSON {_type_name(value)}")
    example = example_pb2.Example()
    for name, content in value.items():
        feature = example.features.feature[name]
        for item in content if isinstance(content, list) else [content]:
            _add_feature_value(item, name, feature)
    return example


def _add_feature_value(value: Any, name: str, feature: Any) -> None:
    kind = feature.WhichOneof("kind")

    def require(expected: str) -> None:
        if kind not in (None, expected):
            label = {"bytes_list": "bytes", "float_list": "float", "int64_list": "int64"}[kind]
            raise invalid(f"Unexpected element type in feature: {name} expecting type: {label}")

    if value is None or isinstance(value, list) or (isinstance(value, dict) and not _is_b64(value)):
        raise invalid(f"Feature: {name} has element with unexpected JSON type: {_type_name(value)}")
    if isinstance(value, bool):
        require("int64_list")
        feature.int64_list.value.append(1 if value else 0)
    elif isinstance(value, dict):
        require("bytes_list")
        feature.bytes_list.value.append(_decode_b64(value))
    elif isinstance(value, str):
        require("bytes_list")
        feature.bytes_list.value.append(value.encode())
    elif isinstance(value, float):
        require("float_list")
        if math.isfinite(value) and abs(value) > FLOAT_MAX:
            raise invalid(f"Cannot convert JSON value: {_to_string(value)} to float without loss "
                          "of precision.")
        feature.float_list.value.append(value)
    else:
        require("int64_list")
        if value >= 2**63:
            raise invalid(f"Feature: {name} has uint64 element. Only int64 is supported.")
        feature.int64_list.value.append(value)
