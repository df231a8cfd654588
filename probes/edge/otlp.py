"""OTLP/HTTP request bodies in, OTLP responses out (the official ``opentelemetry-proto`` types).

What the OTLP specification (protocol/otlp.md) asks of a receiver, and what this module does:

- ``Content-Type: application/x-protobuf`` is the binary encoding; ``application/json`` the JSON
  one (lowerCamelCase keys, 64-bit integers as numbers or strings, enums as integers, unknown
  fields ignored, and ``traceId``/``spanId`` as hex, not protobuf-JSON's base64). Anything else is
  415. The response uses the request's encoding.
- ``Content-Encoding: gzip`` is decompressed with a cap on the decompressed size (413 beyond it:
  a small body must not inflate into gigabytes).
- Undecodable data is a permanent error: 400 with a ``google.rpc.Status`` body, so clients do not
  retry. A full success is an empty ``Export*ServiceResponse``; a partial one sets
  ``partial_success`` with the number rejected and why.
"""

from __future__ import annotations

import base64
import json
import zlib
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from google.rpc import status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)

from tfwarden.core.errors import OtlpRejected

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
HEX_ID_FIELDS = {"traceId": 16, "spanId": 8, "parentSpanId": 8}
MAX_JSON_DEPTH = 32  # OTLP nests ~10 deep (request/resource/scope/metric/points/attributes)
Request = TypeVar("Request", ExportMetricsServiceRequest, ExportLogsServiceRequest)

__all__ = ["JSON", "PROTOBUF", "ExportLogsServiceRequest", "ExportLogsServiceResponse",
           "ExportMetricsServiceRequest", "ExportMetricsServiceResponse", "OtlpRejected",
           "decode", "encoding_of", "error_body", "inflate", "parse", "response_body"]


def encoding_of(content_type: str | None) -> str:
    """``PROTOBUF`` or ``JSON`` from a Content-Type header (parameters ignored), else 415."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media in (PROTOBUF, JSON):
        return media
    raise OtlpRejected(415, f"Content-Type must be {PROTOBUF} or {JSON}, got {media or 'none'!r}")


def decode(kind: type[Request], body: bytes, content_type: str | None,
           content_encoding: str | None, max_bytes: int) -> Request:
    """The request message in ``body`` (``kind``: ExportMetricsServiceRequest or
    ExportLogsServiceRequest); OtlpRejected says what is wrong."""
    encoding, data = inflate(body, content_type, content_encoding, max_bytes)
    return parse(kind, data, encoding)


def inflate(body: bytes, content_type: str | None, content_encoding: str | None,
            max_bytes: int) -> tuple[str, bytes]:
    """The encoding (``PROTOBUF`` or ``JSON``) and the decompressed body (415, 400, 413)."""
    encoding = encoding_of(content_type)
    return encoding, _decompressed(body, (content_encoding or "identity").strip().lower(),
                                   max_bytes)


def parse(kind: type[Request], data: bytes, encoding: str) -> Request:
    """The request message in decompressed ``data`` of ``encoding`` (400 when undecodable)."""
    if encoding == PROTOBUF:
        try:
            message: Request = kind.FromString(data)
            return message
        except (DecodeError, RecursionError) as exc:
            raise OtlpRejected(400, f"body is not a protobuf {kind.__name__}: {exc}") from None
    try:
        document = json.loads(data)
    except RecursionError:
        raise OtlpRejected(400, "body is nested too deeply") from None
    except ValueError as exc:
        raise OtlpRejected(400, f"body is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise OtlpRejected(400, f"body must be a JSON object ({kind.__name__}), got "
                                f"{type(document).__name__}")
    _hex_ids_to_base64(document, 0)
    try:
        parsed: Request = json_format.ParseDict(document, kind(), ignore_unknown_fields=True)
        return parsed
    except (json_format.ParseError, RecursionError, ValueError, TypeError,
            OverflowError) as exc:  # OverflowError: an integer too large for a double
        raise OtlpRejected(400, f"body is not a JSON {kind.__name__}: {exc}"[:500]) from None


def _decompressed(body: bytes, content_encoding: str, max_bytes: int) -> bytes:
    if content_encoding in ("", "identity"):
        return body
    if content_encoding not in ("gzip", "deflate"):
        raise OtlpRejected(415, f"Content-Encoding must be gzip, deflate or identity, got "
                                f"{content_encoding!r}")
    inflater = zlib.decompressobj(wbits=31 if content_encoding == "gzip" else 15)
    try:
        data = inflater.decompress(body, max_bytes + 1)
    except zlib.error as exc:
        raise OtlpRejected(400, f"body is not valid {content_encoding}: {exc}") from None
    if len(data) > max_bytes:
        raise OtlpRejected(413, f"decompressed body is over {max_bytes} bytes")
    return data


def _hex_ids_to_base64(value: Any, depth: int) -> None:
    """OTLP JSON writes trace and span ids in hex; protobuf JSON reads bytes as base64 (hex
    digits are valid base64, so without this they decode silently to the wrong bytes)."""
    if depth > MAX_JSON_DEPTH:
        raise OtlpRejected(400, f"body is nested deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, list):
        for item in value:
            _hex_ids_to_base64(item, depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            if key in HEX_ID_FIELDS and isinstance(item, str):
                value[key] = _hex_to_base64(key, item)
            else:
                _hex_ids_to_base64(item, depth + 1)


def _hex_to_base64(key: str, text: str) -> str:
    if not text:
        return text
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise OtlpRejected(400, f"{key} must be hex, got {text[:40]!r}") from None
    if len(raw) != HEX_ID_FIELDS[key]:
        raise OtlpRejected(400, f"{key} must be {HEX_ID_FIELDS[key]} bytes "
                                f"({2 * HEX_ID_FIELDS[key]} hex digits), got {len(raw)}")
    return base64.b64encode(raw).decode("ascii")


def response_body(response: Message, encoding: str) -> bytes:
    """An Export*ServiceResponse in the request's encoding (full success: empty / ``{}``)."""
    if encoding == PROTOBUF:
        binary: bytes = response.SerializeToString()
        return binary
    text: str = json_format.MessageToJson(response, indent=None)
    return text.encode()


def error_body(message: str, encoding: str, code: int = 3) -> bytes:
    """A ``google.rpc.Status`` (code 3: INVALID_ARGUMENT) in the request's encoding."""
    status = status_pb2.Status(code=code, message=message)
    return response_body(status, encoding)
