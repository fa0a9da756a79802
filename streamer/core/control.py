"""Messages a client may send on the event WebSocket (``/ws``), parsed (sans-I/O).

One message is understood: ``{"type": "subscribe", "streams": [ids] | "*" | null}``.
:func:`parse_control` bounds a message before parsing it and raises

* :class:`~streamer.core.jsonguard.MessageError` for a message the connection
  must be closed for, before it is parsed (too large: 1009, nested too deep: 1008);
* :class:`ControlError` for one that is answered with an ``error`` message
  while the connection goes on (not JSON, not an object, another type, a
  malformed ``streams``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from streamer.core.jsonguard import MessageError, loads_object

MAX_CONTROL_DEPTH = 4
"""A subscribe nests 2 levels; anything deeper is refused before parsing."""


class ControlError(MessageError):
    """A well-formed JSON object this server does not understand (answered, not fatal)."""

    fatal = False


@dataclass(frozen=True)
class Subscribe:
    """Send the client events of ``streams`` only (``None``: every stream)."""

    streams: frozenset[str] | None


def parse_streams(value: Any) -> frozenset[str] | None:
    """``None``/``"*"`` -> every stream; a list of strings -> that set; else :class:`ControlError`."""
    if value is None or value == "*":
        return None
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return frozenset(value)
    raise ControlError("bad_request", '"streams" must be a list of stream ids, "*" or null')


def parse_control(raw: str | bytes, *, max_bytes: int) -> Subscribe:
    """The client's message as a :class:`Subscribe`; see the module docstring for errors."""
    try:
        msg = loads_object(
            raw, max_bytes=max_bytes, max_depth=MAX_CONTROL_DEPTH, what="control message"
        )
    except MessageError as exc:
        if exc.code in ("too_large", "too_deep"):
            raise
        raise ControlError(exc.code, exc.message) from None
    if msg.get("type") != "subscribe":
        raise ControlError(
            "bad_request", 'only {"type": "subscribe", "streams": [...]} is understood'
        )
    return Subscribe(parse_streams(msg.get("streams")))
