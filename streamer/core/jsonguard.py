"""Parse JSON from outside only after bounding it (sans-I/O).

``json.loads`` recurses once per nesting level: a message nested 60,000 deep
raises ``RecursionError`` (not a ``ValueError``) from deep inside the parser,
and a huge message costs memory before anything looks at it. Every JSON
message the daemon and its clients receive (WebSocket control messages,
ingest and Twilio messages, events the robot client reads) goes through
:func:`loads_bounded` instead: its size is measured and its nesting counted
with a linear scan first, and every rejection is a :class:`MessageError`
with a ``code`` and a WebSocket close code.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Final

from dropformer.errors import EmotionMonitorError

MAX_DEPTH: Final = 32
"""Deepest nesting accepted by default (events nest 4 levels, the hello 6)."""

#: code -> WebSocket close code for a connection that sent it
CLOSE_CODES: Final[dict[str, int]] = {
    "too_large": 1009,  # message too big
    "too_deep": 1008,  # policy violation
    "bad_json": 1007,  # invalid frame payload data
    "not_object": 1008,
    "bad_request": 1008,  # (answered, not closed, where the protocol allows)
}

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")


class MessageError(EmotionMonitorError, ValueError):
    """A JSON message was refused before or while parsing; ``code`` says why
    (``too_large``, ``too_deep``, ``bad_json``, ``not_object``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def close_code(self) -> int:
        """The WebSocket close code for a peer that sent such a message."""
        return CLOSE_CODES[self.code]


def nesting_depth(text: str) -> int:
    """The deepest nesting of ``[`` and ``{`` outside strings (a linear scan, no recursion)."""
    depth = deepest = 0
    for ch in _BRACKET.findall(_STRING.sub('""', text)):
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth = max(0, depth - 1)
    return deepest


def loads_bounded(
    data: str | bytes, *, max_bytes: int, max_depth: int = MAX_DEPTH, what: str = "message"
) -> Any:
    """``json.loads(data)`` after checking its size (bytes) and nesting; NaN, Infinity and
    numbers beyond a float's range are refused too. Raises :class:`MessageError`."""
    size = len(data.encode("utf-8", "surrogatepass")) if isinstance(data, str) else len(data)
    if size > max_bytes:
        raise MessageError(
            "too_large", f"{what} of {size} bytes exceeds the limit of {max_bytes} bytes"
        )
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MessageError("bad_json", f"{what} is not UTF-8 text ({exc.reason})") from None
    depth = nesting_depth(data)
    if depth > max_depth:
        raise MessageError("too_deep", f"{what} nests {depth} levels deep; at most {max_depth}")
    try:
        return json.loads(data, parse_constant=_refuse_constant, parse_float=_finite_float)
    except (ValueError, RecursionError) as exc:
        raise MessageError("bad_json", f"{what} is not valid JSON ({exc})") from None


def loads_object(
    data: str | bytes, *, max_bytes: int, max_depth: int = MAX_DEPTH, what: str = "message"
) -> dict[str, Any]:
    """:func:`loads_bounded` for a message that must be a JSON object."""
    obj = loads_bounded(data, max_bytes=max_bytes, max_depth=max_depth, what=what)
    if not isinstance(obj, dict):
        raise MessageError("not_object", f"{what} must be a JSON object, got {type(obj).__name__}")
    return obj


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 parses as inf
        raise ValueError(f"{text[:20]} is out of range")
    return value
