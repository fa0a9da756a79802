"""The inference worker: one thread owns the model and batches windows across streams.

The event loop never runs the model. Streams ``await worker.infer(request)``;
the thread collects up to ``max_batch`` requests (waiting at most
``max_wait_ms`` after the first), drops those already stale, runs the rest in
batches of equal-length requests under ``torch.inference_mode()`` (windows
and whole utterances share the queue; grouping by length means no request is
ever padded, so each result equals the model run on that audio alone), and resolves each caller's future
through ``loop.call_soon_threadsafe``.

Drop policy (real time beats completeness): the queue holds at most
``queue_size`` requests; when it is full the *oldest* request is evicted and
answered ``skipped="stale"``. A request whose deadline has passed when its
batch is formed is skipped the same way. Requests without a deadline (file
replay with ``realtime: false``) are never skipped for age; their producers
wait for each answer, which is the back-pressure.

:class:`InferenceBackend` is the small interface the daemon uses, so that a
remote, shared inference tier can replace this in-process worker later.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol

import numpy as np

from dropformer.normalization import Moments, StreamNormalizer
from streamer.core.importance import TokenImportance
from streamer.core.stream import InferenceRequest, WindowRequest
from streamer.engine import Engine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InferenceOutcome:
    """The answer for one window or utterance: probabilities, or why there are none."""

    request: InferenceRequest
    probs: np.ndarray | None = None
    tokens_in: int = 0
    tokens_kept: int = 0
    skipped: str | None = None  # "stale" (too old / evicted) or "error"
    compute_ms: float = 0.0
    batch_size: int = 0
    moments: Moments | None = None  # the window's raw feature moments, for per-stream normalisation
    importance: TokenImportance | None = None  # last layer's token importance and TDM's drops
    error: str | None = None  # why the model failed on it (skipped="error")


class InferenceBackend(Protocol):
    @property
    def labels(self) -> list[str]: ...

    @property
    def model_info(self) -> dict[str, Any]: ...

    def new_normalizer(self) -> StreamNormalizer | None:
        """A fresh per-stream feature normaliser as the model expects (None: it needs none)."""
        ...

    async def __aenter__(self) -> InferenceBackend: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def infer(
        self, request: InferenceRequest, *, deadline_s: float | None
    ) -> InferenceOutcome: ...

    async def probe(self, n_samples: int) -> str | None:
        """Run the model once on a window of ``n_samples``: ``None`` if it can, else why not
        (the start-up check of the windowing against the model)."""
        ...


@dataclass
class _Item:
    request: InferenceRequest
    future: asyncio.Future[InferenceOutcome]
    loop: asyncio.AbstractEventLoop
    deadline: float | None  # time.monotonic() after which the window is stale
    probe: bool = False  # a start-up check: run alone, failures are answered, not logged


@dataclass
class WorkerStats:
    batches: int = 0
    windows: int = 0
    skipped_stale: int = 0
    evicted: int = 0
    errors: int = 0
    compute_ms: collections.deque[float] = field(
        default_factory=lambda: collections.deque(maxlen=1000)
    )

    def as_dict(self) -> dict[str, Any]:
        recent = sorted(self.compute_ms)
        return {
            "batches": self.batches,
            "windows": self.windows,
            "skipped_stale": self.skipped_stale,
            "evicted": self.evicted,
            "errors": self.errors,
            "compute_ms_median": recent[len(recent) // 2] if recent else None,
        }


class InferenceWorker:
    """In-process :class:`InferenceBackend` running ``Engine`` on a dedicated thread."""

    def __init__(
        self,
        load_engine: Callable[[], Engine],
        *,
        max_batch: int = 8,
        max_wait_ms: float = 10.0,
        queue_size: int = 32,
    ) -> None:
        self._load_engine = load_engine
        self.max_batch, self.max_wait_s, self.queue_size = (
            max_batch,
            max_wait_ms / 1000.0,
            queue_size,
        )
        self._queue: collections.deque[_Item] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.engine: Engine | None = None
        self.stats = WorkerStats()

    @property
    def labels(self) -> list[str]:
        assert self.engine is not None, "worker not started"
        return self.engine.labels

    @property
    def model_info(self) -> dict[str, Any]:
        assert self.engine is not None, "worker not started"
        return self.engine.info

    def new_normalizer(self) -> StreamNormalizer | None:
        assert self.engine is not None, "worker not started"
        return self.engine.new_normalizer()

    async def __aenter__(self) -> InferenceWorker:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        self._thread = threading.Thread(
            target=self._main, args=(loop, ready), name="inference-worker", daemon=True
        )
        self._thread.start()
        await ready  # re-raises a loading error here
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 30.0)

    async def probe(self, n_samples: int) -> str | None:
        """See :meth:`InferenceBackend.probe`."""
        rng = np.random.default_rng(0)
        quiet_noise = (rng.standard_normal(n_samples) * 0.01).astype(np.float32)
        request = WindowRequest("_probe", 0, 0, n_samples, quiet_noise)
        outcome = await self.infer(request, deadline_s=None, probe=True)
        return outcome.error

    async def infer(
        self, request: InferenceRequest, *, deadline_s: float | None, probe: bool = False
    ) -> InferenceOutcome:
        """Queue ``request``; ``deadline_s`` is how long from now it stays worth computing."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[InferenceOutcome] = loop.create_future()
        deadline = None if deadline_s is None else time.monotonic() + deadline_s
        evicted: _Item | None = None
        with self._cond:
            if self._stopping:
                raise RuntimeError("inference worker is stopped")
            if len(self._queue) >= self.queue_size:
                evicted = self._queue.popleft()
                self.stats.evicted += 1
            self._queue.append(_Item(request, fut, loop, deadline, probe))
            self._cond.notify()
        if evicted is not None:
            _resolve(evicted, InferenceOutcome(evicted.request, skipped="stale"))
        return await fut

    # ---------------------------------------------------------------- thread
    def _main(self, loop: asyncio.AbstractEventLoop, ready: asyncio.Future[None]) -> None:
        try:
            self.engine = self._load_engine()
        except BaseException as exc:  # hand any loading failure to the awaiting loop
            loop.call_soon_threadsafe(_set_exception, ready, exc)
            return
        loop.call_soon_threadsafe(_set_result, ready, None)
        while True:
            batch = self._collect()
            if batch is None:
                break
            self._run(batch)
        with self._cond:  # answer what is left so no caller waits forever
            leftover, self._queue = list(self._queue), collections.deque()
        for item in leftover:
            _resolve(item, InferenceOutcome(item.request, skipped="stale"))

    def _collect(self) -> list[_Item] | None:
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
            end = time.monotonic() + self.max_wait_s
            while len(self._queue) < self.max_batch and not self._stopping:
                left = end - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
        return batch

    def _run(self, batch: list[_Item]) -> None:
        assert self.engine is not None
        now = time.monotonic()
        fresh = []
        for item in batch:
            if item.future.cancelled():
                continue
            if item.probe:
                self._probe(item)
                continue
            if item.deadline is not None and now > item.deadline:
                self.stats.skipped_stale += 1
                _resolve(item, InferenceOutcome(item.request, skipped="stale"))
            else:
                fresh.append(item)
        groups: dict[int, list[_Item]] = {}
        for item in fresh:  # equal lengths only: nothing is padded
            groups.setdefault(len(item.request.samples), []).append(item)
        for group in groups.values():
            self._run_group(group)

    def _run_group(self, fresh: list[_Item]) -> None:
        assert self.engine is not None
        try:
            res = self.engine.run(
                [it.request.samples for it in fresh], [it.request.norm for it in fresh]
            )
        except Exception:
            log.exception("inference failed on a batch of %d windows; they are skipped", len(fresh))
            self.stats.errors += len(fresh)
            for it in fresh:
                _resolve(it, InferenceOutcome(it.request, skipped="error"))
            return
        self.stats.batches += 1
        self.stats.windows += len(fresh)
        self.stats.compute_ms.append(res.compute_ms)
        for i, it in enumerate(fresh):
            _resolve(
                it,
                InferenceOutcome(
                    it.request,
                    res.probs[i],
                    int(res.tokens_in[i]),
                    int(res.tokens_kept[i]),
                    None,
                    res.compute_ms,
                    len(fresh),
                    None if res.moments is None else res.moments[i],
                    importance=None if res.importance is None else res.importance[i],
                ),
            )

    def _probe(self, item: _Item) -> None:
        assert self.engine is not None
        try:
            self.engine.run([item.request.samples], [None])
        except Exception as exc:
            text = " ".join(f"{type(exc).__name__}: {exc}".split())
            _resolve(item, InferenceOutcome(item.request, skipped="error", error=text[:200]))
            return
        _resolve(item, InferenceOutcome(item.request))


def _resolve(item: _Item, outcome: InferenceOutcome) -> None:
    try:
        item.loop.call_soon_threadsafe(_set_result, item.future, outcome)
    except RuntimeError:  # the loop is closed: nobody is waiting any more
        pass


def _set_result(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exception(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
