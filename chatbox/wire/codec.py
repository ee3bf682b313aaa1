"""JSON in and out of chatbox, in one place.

orjson is strict where the standard library is lenient, and chatbox relies on
that: NaN, Infinity, lone surrogates and nesting deeper than 1024 are decode
errors (answered with WrongFormatJSON), so nothing decoded can fail to encode
again when it is echoed back in a reply.
"""

from typing import Any

import orjson

__all__ = ["DecodeError", "decode", "encode", "encode_compact"]

DecodeError = orjson.JSONDecodeError


def decode(payload: bytes | str) -> Any:
    """Parse one JSON text; raises DecodeError on anything that is not JSON."""
    return orjson.loads(payload)


def encode(value: Any) -> bytes:
    """Compact UTF-8 JSON.

    Integers beyond 64 bits cannot come from decode() (orjson turns them into
    floats), so every value a client sent can be echoed back.
    """
    return orjson.dumps(value)


def encode_compact(value: Any) -> bytes:
    """Compact UTF-8 JSON for bytes that are kept, such as history entries.

    The bytes orjson returns keep its working buffer (about 4 KiB whatever
    the JSON's length); kept by the million, that is gigabytes. A copy is
    exactly as long as the JSON. Frames sent once and dropped do not need it.
    """
    return memoryview(orjson.dumps(value)).tobytes()
