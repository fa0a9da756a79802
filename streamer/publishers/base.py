"""What publishers are handed (:class:`Message`), the :class:`Publisher` protocol,
its counters, and a drop-oldest queue.

The hub encodes each event once (:func:`encode`) and hands every publisher the
same :class:`Message`: the JSON text, the text without the optional
``importance`` object (encoded at most once more, for publishers that leave it
out), and the decoded object for the few that need a field.

A publisher is an async context manager with one synchronous method,
``publish(message)``. ``publish`` never blocks and never raises because a
consumer is slow or the network is down: it puts the message in a bounded
queue that a background task drains. When a queue is full the OLDEST entry is
dropped and counted (the newest estimate is the one worth delivering), per
stream too (:meth:`PublisherStats.lose`), so that each stream's status can
say what it lost.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from functools import cached_property
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

log = logging.getLogger(__name__)

T = TypeVar("T")


def encode_json(obj: Any) -> str:
    """Compact, strict JSON (NaN/Infinity are refused: browsers cannot parse them).
    Raises ``TypeError``/``ValueError`` on objects that are not JSON."""
    return json.dumps(obj, separators=(",", ":"), allow_nan=False, ensure_ascii=False)


@dataclass(frozen=True, eq=False)
class Message:
    """One event, encoded once by the hub; what every publisher is handed.

    Attributes:
        event: the event object (read it, never change it).
        text: the event as compact JSON.
    """

    event: Mapping[str, Any]
    text: str

    @property
    def type(self) -> str | None:
        """The event's ``type`` (``None`` if it has none)."""
        kind = self.event.get("type")
        return kind if isinstance(kind, str) else None

    @property
    def stream_id(self) -> str | None:
        """The event's ``stream_id`` (``None`` for daemon-wide events)."""
        sid = self.event.get("stream_id")
        return sid if isinstance(sid, str) else None

    @cached_property
    def lean_text(self) -> str:
        """The JSON without the optional ``importance`` object (``text`` when it has none)."""
        if "importance" not in self.event:
            return self.text
        return encode_json({k: v for k, v in self.event.items() if k != "importance"})

    def text_for(self, importance: bool) -> str:
        """``text`` for a publisher that keeps ``importance``, else ``lean_text``."""
        return self.text if importance else self.lean_text


def encode(event: Mapping[str, Any]) -> Message:
    """The :class:`Message` of ``event``; ``TypeError``/``ValueError`` when it is not JSON."""
    return Message(event, encode_json(event))


@dataclass
class PublisherStats:
    """Counters every publisher keeps.

    Attributes:
        published: messages handed on (sent to the broker / clients, written).
        dropped: messages lost (a full queue, the network or disk down, undelivered at close).
        lost_by_stream: ``dropped`` per stream id (daemon-wide messages are not in it).
    """

    published: int = 0
    dropped: int = 0
    lost_by_stream: dict[str, int] = field(default_factory=dict, repr=False)

    def track(self, stream_id: str | None) -> None:
        """Keep a per-stream count for ``stream_id`` (publishers call it for each message)."""
        if stream_id is not None and stream_id not in self.lost_by_stream:
            self.lost_by_stream[stream_id] = 0

    def lose(self, stream_id: str | None, n: int = 1) -> None:
        """Count ``n`` lost messages of ``stream_id`` (per stream only while it is tracked:
        a stream that ended and was forgotten counts in the total alone)."""
        self.dropped += n
        if stream_id in self.lost_by_stream:
            self.lost_by_stream[stream_id] += n

    def forget(self, stream_id: str) -> None:
        """An ended stream: stop keeping its per-stream count (the total stays)."""
        self.lost_by_stream.pop(stream_id, None)

    def as_dict(self) -> dict[str, Any]:
        """The counters as a plain dict (without the per-stream counts)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "lost_by_stream"}


@runtime_checkable
class Publisher(Protocol):
    """Something messages can be handed to: ``async with p: p.publish(message)``."""

    stats: PublisherStats

    async def __aenter__(self) -> Any: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def publish(self, message: Message) -> None: ...


def should_log(n: int) -> bool:
    """Whether the ``n``-th occurrence of a repeated problem is worth a log line
    (1, 10, 100, 1000, then every 1000th); a periodic summary gives running totals."""
    return n in (1, 10, 100) or n % 1000 == 0


class DropOldestQueue(Generic[T]):
    """A bounded FIFO for one consumer task: ``put`` never blocks; when full it
    drops the oldest item (``push`` returns it) so the caller can count it."""

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize}")
        self.maxsize = maxsize
        self._items: deque[T] = deque()
        self._ready = asyncio.Event()

    def __len__(self) -> int:
        return len(self._items)

    def full(self) -> bool:
        """Whether the next ``put`` drops an item."""
        return len(self._items) >= self.maxsize

    def put(self, item: T) -> bool:
        """Append ``item``; returns whether the oldest item was dropped to make room."""
        return self.push(item) is not None

    def push(self, item: T) -> T | None:
        """Append ``item``; returns the oldest item if it was dropped to make room."""
        dropped = self._items.popleft() if len(self._items) >= self.maxsize else None
        self._items.append(item)
        self._ready.set()
        return dropped

    def put_front(self, item: T) -> bool:
        """Put back an item that could not be delivered (it goes out first).
        Returns ``True`` if the queue was full and the item was dropped instead."""
        if len(self._items) >= self.maxsize:
            return True
        self._items.appendleft(item)
        self._ready.set()
        return False

    def get_nowait(self) -> T:
        """Take the oldest item (``IndexError`` when empty)."""
        item = self._items.popleft()
        if not self._items:
            self._ready.clear()
        return item

    def drain(self) -> list[T]:
        """Take every queued item."""
        items = list(self._items)
        self._items.clear()
        self._ready.clear()
        return items

    async def wait(self) -> None:
        """Wait until the queue holds an item or :meth:`wake` is called."""
        if self._items:
            return
        self._ready.clear()
        await self._ready.wait()

    def wake(self) -> None:
        """Wake a task blocked in :meth:`wait` (e.g. to notice shutdown)."""
        self._ready.set()
