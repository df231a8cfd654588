"""Length-prefixed JSON frames: the protocol between the daemon and its worker processes.

A frame is a 4-byte big-endian length followed by that many bytes of UTF-8 JSON (one object).
Frames above ``MAX_FRAME`` are refused on both sides, so a confused peer cannot make the other
allocate without bound.
"""

from __future__ import annotations

import json
import struct
from typing import IO, Any

from tfwarden.core.errors import FrameError

HEADER = struct.Struct(">I")
MAX_FRAME = 64 * 2**20


def encode(message: dict[str, Any]) -> bytes:
    data = json.dumps(message, separators=(",", ":"), allow_nan=False).encode()
    if len(data) > MAX_FRAME:
        raise FrameError(f"frame of {len(data)} bytes is over {MAX_FRAME}")
    return HEADER.pack(len(data)) + data


def decode(data: bytes) -> dict[str, Any]:
    try:
        message = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FrameError(f"frame is not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise FrameError("frame is not a JSON object")
    return message


def length(header: bytes) -> int:
    (size,) = HEADER.unpack(header)
    if size > MAX_FRAME:
        raise FrameError(f"frame of {size} bytes announced; the limit is {MAX_FRAME}")
    return int(size)


def read(stream: IO[bytes]) -> dict[str, Any] | None:
    """One frame from a blocking stream; None at a clean end of stream."""
    header = stream.read(HEADER.size)
    if not header:
        return None
    if len(header) < HEADER.size:
        raise FrameError("stream ended inside a frame header")
    size = length(header)
    data = stream.read(size)
    if len(data) < size:
        raise FrameError("stream ended inside a frame")
    return decode(data)
