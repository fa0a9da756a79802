"""The hub: encodes every event once and fans the :class:`Message` out to the
publishers, isolating their failures.

It also remembers the last ``stream.status`` and the last ``emotion.estimate``
of each stream, its last few ``emotion.transition`` and ``emotion.utterance``
events and its last
estimate that carried token importance, so a client that connects late can be
told where things stand (the WebSocket server's hello message reads
:meth:`Hub.snapshot`).
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Mapping
from types import TracebackType
from typing import Any, TypeVar

from streamer.publishers.base import Message, Publisher, encode, should_log

log = logging.getLogger(__name__)

P = TypeVar("P", bound=Publisher)


TRANSITIONS_KEPT = 10
"""Transitions per stream remembered for late clients (the dashboard shows as many)."""
UTTERANCES_KEPT = 10
"""Utterances per stream remembered for late clients (the dashboard shows as many)."""


class StreamSnapshot:
    """The latest status and estimate per stream, its last transitions and utterances and
    its last estimate with token importance, updated from events."""

    def __init__(self) -> None:
        self.last_status: dict[str, dict[str, Any]] = {}
        self.last_estimate: dict[str, dict[str, Any]] = {}
        self.last_importance: dict[str, dict[str, Any]] = {}
        self.transitions: dict[str, deque[dict[str, Any]]] = {}
        self.utterances: dict[str, deque[dict[str, Any]]] = {}
        self.streams: dict[str, None] = {}  # ordered set of stream ids seen

    def update(self, event: Mapping[str, Any]) -> None:
        """Record ``event`` if it carries a stream id (other events are ignored)."""
        sid = event.get("stream_id")
        if not isinstance(sid, str):
            return
        self.streams.setdefault(sid, None)
        kind = event.get("type")
        if kind == "stream.status":
            self.last_status[sid] = dict(event)
        elif kind == "emotion.estimate":
            self.last_estimate[sid] = dict(event)
            if event.get("importance") is not None:
                self.last_importance[sid] = self.last_estimate[sid]
        elif kind == "emotion.transition":
            kept = self.transitions.setdefault(sid, deque(maxlen=TRANSITIONS_KEPT))
            kept.append(dict(event))
        elif kind == "emotion.utterance":
            heard = self.utterances.setdefault(sid, deque(maxlen=UTTERANCES_KEPT))
            heard.append(dict(event))

    def forget(self, stream_id: str) -> None:
        """Drop an ended stream (a network session) so the snapshot does not grow."""
        self.streams.pop(stream_id, None)
        self.last_status.pop(stream_id, None)
        self.last_estimate.pop(stream_id, None)
        self.last_importance.pop(stream_id, None)
        self.transitions.pop(stream_id, None)
        self.utterances.pop(stream_id, None)

    def as_dict(self) -> dict[str, Any]:
        """``{"streams": [...], "last_status": {...}, "last_estimate": {...},
        "last_importance": {...}, "transitions": {sid: [oldest, ..., newest]},
        "utterances": {sid: [oldest, ..., newest]}}``."""
        return {
            "streams": list(self.streams),
            "last_status": dict(self.last_status),
            "last_estimate": dict(self.last_estimate),
            "last_importance": dict(self.last_importance),
            "transitions": {sid: list(t) for sid, t in self.transitions.items()},
            "utterances": {sid: list(u) for sid, u in self.utterances.items()},
        }


class Hub:
    """Hand each event to every publisher; one failing publisher is logged and
    counted in ``errors[name]`` and never stops the others.

    ``async with hub:`` enters every publisher added before (in order) and
    closes them in reverse order on exit; publishers may also be managed by
    the caller and only ``add``-ed here.
    """

    def __init__(self) -> None:
        self.publishers: list[tuple[str, Publisher]] = []
        self.state = StreamSnapshot()
        self.events = 0
        self.invalid = 0  # events that are not JSON (never handed on)
        self.errors: dict[str, int] = {}
        self._stack: contextlib.AsyncExitStack | None = None

    def add(self, publisher: P, name: str | None = None) -> P:
        """Register ``publisher`` (``name`` defaults to its class name plus a number)."""
        name = name or f"{type(publisher).__name__}#{len(self.publishers)}"
        self.publishers.append((name, publisher))
        self.errors.setdefault(name, 0)
        return publisher

    def publish(self, event: Mapping[str, Any]) -> Message | None:
        """Encode ``event`` once, record it in the snapshot and hand it to every publisher.

        Returns the message, or ``None`` (logged and counted in ``invalid``) when the
        event is not JSON (NaN, a non-JSON type): no publisher could send it.
        """
        try:
            message = encode(event)
        except (TypeError, ValueError) as exc:
            self.invalid += 1
            if should_log(self.invalid):
                log.error(
                    "event of type %r is not valid JSON (%s); not published (%d so far)",
                    event.get("type"),
                    exc,
                    self.invalid,
                )
            return None
        self.events += 1
        self.state.update(event)
        for name, publisher in self.publishers:
            try:
                publisher.publish(message)
            except Exception:
                self.errors[name] += 1
                n = self.errors[name]
                if should_log(n):
                    log.exception(
                        "publisher %s failed on a %r event (%d failure(s) so far)",
                        name,
                        message.type,
                        n,
                    )
        return message

    def losses(self, stream_id: str) -> dict[str, int]:
        """Messages of ``stream_id`` each publisher lost so far: ``{"lost_<name>": n}``."""
        return {
            f"lost_{name}": p.stats.lost_by_stream.get(stream_id, 0) for name, p in self.publishers
        }

    def lost_total(self) -> dict[str, int]:
        """Messages each publisher lost so far, all streams and daemon-wide ones: ``{name: n}``."""
        return {name: p.stats.dropped for name, p in self.publishers}

    def forget(self, stream_id: str) -> None:
        """An ended stream's state is released: the snapshot and every publisher that
        keeps per-stream state (``forget(stream_id)``) drop it."""
        self.state.forget(stream_id)
        for name, publisher in self.publishers:
            publisher.stats.forget(stream_id)
            forget = getattr(publisher, "forget", None)
            if forget is None:
                continue
            try:
                forget(stream_id)
            except Exception:
                self.errors[name] += 1
                log.exception("publisher %s failed to forget stream %s", name, stream_id)

    def snapshot(self) -> dict[str, Any]:
        """Known streams with their last status and estimate (see :class:`StreamSnapshot`)."""
        return self.state.as_dict()

    def stats(self) -> dict[str, Any]:
        """Counters of the hub and of each publisher."""
        pubs: dict[str, Any] = {}
        for name, p in self.publishers:
            pubs[name] = {**p.stats.as_dict(), "errors": self.errors[name]}
        return {"events": self.events, "invalid": self.invalid, "publishers": pubs}

    async def __aenter__(self) -> Hub:
        async with contextlib.AsyncExitStack() as stack:
            for _, publisher in self.publishers:
                await stack.enter_async_context(publisher)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()
