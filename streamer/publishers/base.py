"""The :class:`Publisher` protocol, its counters, and a drop-oldest queue.

A publisher is an async context manager with one synchronous method,
``publish(event)``. ``publish`` never blocks and never raises because a
consumer is slow or the network is down: it puts the event in a bounded queue
that a background task drains. When a queue is full the OLDEST entry is
dropped and counted (the newest estimate is the one worth delivering).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

log = logging.getLogger(__name__)

T = TypeVar("T")
Event = Mapping[str, Any]


@dataclass
class PublisherStats:
    """Counters every publisher keeps.

    Attributes:
        published: events handed on (sent to the broker / clients, written).
        dropped: events dropped by a full queue (slow consumer, network down).
        invalid: events that could not be encoded as JSON (logged, not sent).
    """

    published: int = 0
    dropped: int = 0
    invalid: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The counters as a plain dict."""
        return asdict(self)


@runtime_checkable
class Publisher(Protocol):
    """Something events can be handed to: ``async with p: p.publish(event)``."""

    stats: PublisherStats

    async def __aenter__(self) -> Any: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def publish(self, event: Event) -> None: ...


def without_importance(event: Event) -> Event:
    """``event`` without its optional ``importance`` object (for publishers that leave it out)."""
    if "importance" not in event:
        return event
    return {k: v for k, v in event.items() if k != "importance"}


def encode_event(event: Event) -> str:
    """Compact, strict JSON for one event (NaN/Infinity are refused: browsers
    cannot parse them). Raises ``TypeError``/``ValueError`` on bad events."""
    return json.dumps(event, separators=(",", ":"), allow_nan=False, ensure_ascii=False)


def encode_or_count(event: Event, stats: PublisherStats, who: str) -> str | None:
    """:func:`encode_event`, or ``None`` after counting and logging a bad event."""
    try:
        return encode_event(event)
    except (TypeError, ValueError) as exc:
        stats.invalid += 1
        if stats.invalid in (1, 10, 100) or stats.invalid % 1000 == 0:
            log.warning(
                "%s: event of type %r is not valid JSON (%s); dropped (%d so far)",
                who, event.get("type") if isinstance(event, Mapping) else None, exc, stats.invalid,
            )
        return None


class DropOldestQueue(Generic[T]):
    """A bounded FIFO for one consumer task: ``put`` never blocks; when full it
    drops the oldest item and returns ``True`` so the caller can count it."""

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError(f"max_queue must be >= 1, got {maxsize}")
        self.maxsize = maxsize
        self._items: deque[T] = deque()
        self._ready = asyncio.Event()

    def __len__(self) -> int:
        return len(self._items)

    def full(self) -> bool:
        """Whether the next ``put`` drops an item."""
        return len(self._items) >= self.maxsize

    def put(self, item: T) -> bool:
        """Append ``item``; returns whether the oldest item was dropped."""
        dropped = False
        if len(self._items) >= self.maxsize:
            self._items.popleft()
            dropped = True
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
