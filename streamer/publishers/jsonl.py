"""Append events to a JSON Lines file (one event per line) for offline analysis.

Writes happen on a worker thread so a slow disk never blocks the event loop.
Every line is either written whole or counted as lost: a write that fails
(a full disk, a vanished mount) counts the lines it did not finish, per stream
too (each stream's status carries ``lost_jsonl``), cuts a half-written line
off again so the file stays parseable, and logs the running total; the sink
goes on with the next events. Closing writes out what is queued and
``fsync``-s; a failure there is counted and logged the same way, never raised.

Rotation (``rotate_mb``): past that size the file becomes ``<path>.1`` (older
ones shift up to ``.2``, ``.3`` ...) and a new file is started. ``rotate_keep``
files are kept; the one that falls off is deleted and the deletion logged.
``rotate_keep: null`` keeps every rotated file.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from types import TracebackType

from dropformer.errors import ConfigError
from streamer.config import JsonlConfig
from streamer.publishers.base import DropOldestQueue, Message, PublisherStats, should_log

log = logging.getLogger(__name__)

_Line = tuple[str | None, bytes]  # (stream id, the line with its newline)


class JsonlSink:
    """Write each event as one line of JSON to ``cfg.path`` (appending); see the module docstring.

    Args:
        cfg: the ``publish.jsonl`` section (path, rotation, importance).
        max_queue: lines buffered while the disk is slow; when full the OLDEST
            is dropped and counted.
    """

    def __init__(self, cfg: JsonlConfig, *, max_queue: int = 10000) -> None:
        self.cfg = cfg
        self.path = Path(cfg.path)
        self.rotate_bytes = int(cfg.rotate_mb * 1_000_000) if cfg.rotate_mb is not None else None
        self.rotate_keep = cfg.rotate_keep
        self.importance = cfg.importance
        self.stats = PublisherStats()
        self.rotations = 0
        self.deleted = 0  # rotated files deleted (beyond rotate_keep)
        self.write_errors = 0
        self.last_error: str | None = None
        self._queue: DropOldestQueue[_Line] = DropOldestQueue(max_queue)
        self._fd: int | None = None
        self._size = 0
        self._writer: asyncio.Task[None] | None = None
        self._closing = False

    def publish(self, message: Message) -> None:
        """Queue ``message`` for writing; never blocks."""
        self.stats.track(message.stream_id)
        dropped = self._queue.push(
            (message.stream_id, (message.text_for(self.importance) + "\n").encode())
        )
        if dropped is not None:
            self.stats.lose(dropped[0])
            if should_log(self.stats.dropped):
                log.warning(
                    "jsonl %s: disk too slow; %d event(s) lost so far",
                    self.path,
                    self.stats.dropped,
                )

    def forget(self, stream_id: str) -> None:
        """Nothing per stream is kept here (the hub forgets the loss count)."""

    async def __aenter__(self) -> JsonlSink:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._open()
        except OSError as exc:
            raise ConfigError(
                f"publish.jsonl.path {str(self.path)!r} cannot be opened for appending ({exc})"
            ) from exc
        self._writer = asyncio.get_running_loop().create_task(self._write_loop())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closing = True
        self._queue.wake()
        if self._writer is not None:
            await asyncio.wait([self._writer])
            self._writer = None
        if self._fd is not None:
            await asyncio.to_thread(self._final_flush, self._queue.drain())
        if self.stats.dropped:
            log.warning(
                "jsonl %s: closed; %d event(s) written, %d lost",
                self.path,
                self.stats.published,
                self.stats.dropped,
            )

    # -- on the worker thread ------------------------------------------------
    def _open(self) -> None:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._size = os.fstat(self._fd).st_size

    def _final_flush(self, lines: list[_Line]) -> None:
        self._write(lines)
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.fsync(fd)
        except OSError as exc:
            if exc.errno not in (
                22,
                95,
            ):  # EINVAL, EOPNOTSUPP: not a file that can be synced (a pipe, /dev/full)
                self._failed(f"fsync failed ({exc})", [])
        finally:
            try:
                os.close(fd)
            except OSError as exc:
                self._failed(f"close failed ({exc})", [])

    async def _write_loop(self) -> None:
        while not self._closing:
            await self._queue.wait()
            lines = self._queue.drain()
            if lines:
                await asyncio.to_thread(self._write, lines)

    def _write(self, lines: list[_Line]) -> None:
        """Write ``lines`` (rotating whenever the file reaches ``rotate_mb``); never raises."""
        if self.rotate_bytes is None:
            self._write_chunk(lines)
            return
        start = 0
        size = self._size
        for i, (_, line) in enumerate(lines):
            size += len(line)
            if size >= self.rotate_bytes:
                self._write_chunk(lines[start : i + 1])
                start, size = i + 1, self._size
        if start < len(lines):
            self._write_chunk(lines[start:])

    def _write_chunk(self, lines: list[_Line]) -> None:
        """Write ``lines`` whole, or count the ones not written; never raises."""
        if self._fd is None:
            self._failed("the file is not open", lines)
            return
        data = b"".join(line for _, line in lines)
        start, done = self._size, 0
        try:
            while done < len(data):
                n = os.write(self._fd, data[done:])
                if n <= 0:
                    raise OSError("write wrote nothing")
                done += n
        except OSError as exc:
            kept = self._whole_lines(lines, done)
            if kept < done:  # a line cut in half: take it off again (best effort)
                try:
                    os.ftruncate(self._fd, start + kept)
                except OSError:
                    pass
            self._size = start + kept
            self._count_written(lines, kept)
            self._failed(f"write failed ({exc})", lines[self._n_lines(lines, kept) :])
            return
        self._size = start + done
        self.stats.published += len(lines)
        if self.rotate_bytes is not None and self._size >= self.rotate_bytes:
            self._rotate()

    @staticmethod
    def _whole_lines(lines: list[_Line], done: int) -> int:
        """Bytes of the whole lines among the first ``done`` bytes written."""
        total = 0
        for _, line in lines:
            if total + len(line) > done:
                break
            total += len(line)
        return total

    @staticmethod
    def _n_lines(lines: list[_Line], nbytes: int) -> int:
        total = n = 0
        for _, line in lines:
            if total + len(line) > nbytes:
                break
            total += len(line)
            n += 1
        return n

    def _count_written(self, lines: list[_Line], nbytes: int) -> None:
        self.stats.published += self._n_lines(lines, nbytes)

    def _failed(self, what: str, lost: list[_Line]) -> None:
        for sid, _ in lost:
            self.stats.lose(sid)
        self.write_errors += 1
        self.last_error = what
        if should_log(self.write_errors):
            log.error(
                "jsonl %s: %s; %d event(s) lost now, %d in all (%d failure(s) so far)",
                self.path,
                what,
                len(lost),
                self.stats.dropped,
                self.write_errors,
            )

    def _rotate(self) -> None:
        """``path`` -> ``path.1`` (older ones shift up; the one past ``rotate_keep`` is deleted)."""
        assert self._fd is not None
        try:
            os.fsync(self._fd)
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None
        try:
            keep = self.rotate_keep
            if keep is None:  # keep everything: shift every rotated file up
                keep = 1
                while self._rotated(keep).exists():
                    keep += 1
            else:
                oldest = self._rotated(keep)
                if oldest.exists():
                    oldest.unlink()
                    self.deleted += 1
                    log.info(
                        "jsonl %s: deleted %s (publish.jsonl.rotate_keep=%d; %d deleted so far)",
                        self.path,
                        oldest,
                        keep,
                        self.deleted,
                    )
            for i in range(keep - 1, 0, -1):
                older = self._rotated(i)
                if older.exists():
                    older.replace(self._rotated(i + 1))
            self.path.replace(self._rotated(1))
            self.rotations += 1
            log.info(
                "jsonl %s: rotated to %s (%d rotation(s) so far)",
                self.path,
                self._rotated(1),
                self.rotations,
            )
        except OSError as exc:
            log.error("jsonl %s: rotation failed (%s); appending to the same file", self.path, exc)
        try:
            self._open()
        except OSError as exc:
            self._failed(f"cannot reopen after rotation ({exc})", [])

    def _rotated(self, i: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{i}")

    def health(self) -> dict[str, object]:
        """Counters (for ``/healthz``)."""
        return {
            **self.stats.as_dict(),
            "queued": len(self._queue),
            "rotations": self.rotations,
            "deleted": self.deleted,
            "write_errors": self.write_errors,
            "last_error": self.last_error,
        }
