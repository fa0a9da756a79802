"""Append events to a JSON Lines file (one event per line) for offline analysis."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from types import TracebackType
from typing import IO

from dropformer.errors import ConfigError
from streamer.publishers.base import (
    DropOldestQueue,
    Event,
    PublisherStats,
    encode_or_count,
    without_importance,
)

log = logging.getLogger(__name__)


class JsonlSink:
    """Write each event as one line of JSON to ``path`` (appending).

    Args:
        path: the file; its folder is created if missing.
        flush_every: flush to the OS after this many events (1: every event).
        rotate_mb: when the file grows past this many megabytes it is renamed
            ``<path>.1`` (older ones shift to ``.2`` ... ``.<rotate_keep>``,
            the oldest is deleted) and a new file is started; ``None``: never.
        rotate_keep: rotated files kept.
        max_queue: events buffered while the disk is slow; when full the
            OLDEST is dropped and counted in ``stats.dropped``.
        importance: keep estimates' ``importance`` object (default False: left out).

    Writes happen on a worker thread so a slow disk never blocks the event
    loop. On close the queue is written out, flushed and ``fsync``-ed.
    """

    def __init__(
        self, path: str | Path, *, flush_every: int = 1, rotate_mb: float | None = None,
        rotate_keep: int = 5, max_queue: int = 10000, importance: bool = False,
    ) -> None:
        if flush_every < 1:
            raise ConfigError(f"jsonl.flush_every must be >= 1 event, got {flush_every!r}")
        if rotate_mb is not None and not rotate_mb > 0:
            raise ConfigError(f"jsonl.rotate_mb must be > 0 megabytes or null, got {rotate_mb!r}")
        if rotate_keep < 1:
            raise ConfigError(f"jsonl.rotate_keep must be >= 1, got {rotate_keep!r}")
        self.path = Path(path)
        self.flush_every = flush_every
        self.rotate_bytes = int(rotate_mb * 1_000_000) if rotate_mb is not None else None
        self.rotate_keep = rotate_keep
        self.importance = importance
        self.stats = PublisherStats()
        self.rotations = 0
        self._queue: DropOldestQueue[str] = DropOldestQueue(max_queue)
        self._file: IO[str] | None = None
        self._unflushed = 0
        self._writer: asyncio.Task[None] | None = None
        self._closing = False

    def publish(self, event: Event) -> None:
        """Queue ``event`` for writing; never blocks."""
        if not self.importance:
            event = without_importance(event)
        line = encode_or_count(event, self.stats, f"jsonl {self.path}")
        if line is None:
            return
        if self._queue.put(line):
            self.stats.dropped += 1
            if self.stats.dropped in (1, 100) or self.stats.dropped % 10000 == 0:
                log.warning("jsonl %s: disk too slow; dropped %d event(s)", self.path, self.stats.dropped)

    async def __aenter__(self) -> JsonlSink:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"jsonl.path {str(self.path)!r} cannot be opened for appending ({exc})") from exc
        self._writer = asyncio.get_running_loop().create_task(self._write_loop())
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closing = True
        self._queue.wake()
        if self._writer is not None:
            await asyncio.wait([self._writer])
            self._writer = None
        if self._file is not None:
            await asyncio.to_thread(self._write, self._queue.drain(), True)
            self._file.close()
            self._file = None

    async def _write_loop(self) -> None:
        while not self._closing:
            await self._queue.wait()
            lines = self._queue.drain()
            if lines:
                try:
                    await asyncio.to_thread(self._write, lines, False)
                except OSError as exc:
                    self.stats.dropped += len(lines)
                    log.error("jsonl %s: write failed (%s); %d event(s) lost", self.path, exc, len(lines))

    def _write(self, lines: list[str], sync: bool) -> None:
        """On a worker thread: write, flush every ``flush_every`` lines, rotate."""
        f = self._file
        assert f is not None
        for line in lines:
            f.write(line + "\n")
            self.stats.published += 1
            self._unflushed += 1
            if self._unflushed >= self.flush_every:
                f.flush()
                self._unflushed = 0
                if self.rotate_bytes is not None and f.tell() >= self.rotate_bytes:
                    f = self._rotate()
        if sync:
            f.flush()
            os.fsync(f.fileno())

    def _rotate(self) -> IO[str]:
        assert self._file is not None
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        for i in range(self.rotate_keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{i + 1}"))
        self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        self._file = self.path.open("a", encoding="utf-8")
        self.rotations += 1
        log.info("jsonl %s: rotated (%d so far)", self.path, self.rotations)
        return self._file
