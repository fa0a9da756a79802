"""The gateway side of the shared inference tier: an :class:`InferenceBackend` that sends
windows to a Ray Serve application (``worker.backend: ray``; docs/scale-out.md).

The daemon keeps everything per stream (sources, windowing, gate, smoothing,
alerts, publishing) and becomes a gateway; the model runs as a Serve
deployment (:mod:`streamer.serve_app`) that many gateways share. Ray is
imported only when this backend is entered, so the daemon runs without it.

Connection policy (the gateway never crashes and keeps its streams running):

- At start-up the backend waits for the Ray cluster and the application,
  retrying with back-off (``worker.ray.retry_min_s`` doubling up to
  ``retry_max_s``), at most ``connect_timeout_s`` (null: until it comes).
- A call that fails (a replica died, the application was deleted, the
  cluster is unreachable) or takes longer than ``request_timeout_s`` marks
  the tier *lagging* and starts the back-off; no window is sent until it
  ends. The window itself is retried until its deadline passes; then it is
  answered ``skipped="stale"`` and counted, as the local worker counts it.
  Windows without a deadline (file replay with ``realtime: false``) wait for
  the tier: batch analysis skips nothing. The first answer clears the state.
- While lagging, :attr:`RayServeBackend.lagging` says why; the daemon adds it
  to each stream's ``stream.status`` detail, and ``/healthz`` (``worker``)
  carries it with the counters.
- At most ``worker.queue_size`` windows wait per gateway; when full the
  oldest is answered ``skipped="stale"`` (counted in ``evicted``).

Every request carries its window's deadline as wall-clock time
(``time.time()``); the replica skips windows already stale when their batch
forms and says so in the answer. Keep the gateways' clocks in sync (NTP).
"""

from __future__ import annotations

import asyncio
import collections
import copy
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import numpy as np

from dropformer.errors import ConfigError, EmotionMonitorError
from dropformer.normalization import Moments, StreamNormalizer
from streamer.config import RayConfig
from streamer.core.importance import TokenImportance
from streamer.core.stream import InferenceRequest, WindowRequest
from streamer.worker import InferenceOutcome

log = logging.getLogger(__name__)

RAY_EXTRA_HINT = (
    "worker.backend=ray needs Ray Serve: install the ray extra "
    "(pip install 'emotion-monitor[ray]'), or set worker.backend=local"
)
#: how long after a window's deadline the gateway still waits for the replica's answer
#: (which will be ``skipped="stale"``) before it gives up on it
DEADLINE_GRACE_S = 1.0


def import_ray() -> tuple[Any, Any]:
    """``(ray, ray.serve)``, or :class:`ConfigError` naming the extra to install."""
    use_cluster_token()  # before Ray reads its configuration, at import
    try:
        import ray
        from ray import serve
    except ImportError as exc:
        raise ConfigError(f"{RAY_EXTRA_HINT} ({exc})") from None
    return ray, serve


def use_cluster_token() -> None:
    """Turn on Ray's token authentication for this process when a token is at hand
    (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``) and
    ``RAY_AUTH_MODE`` is unset: a cluster started by Ray 2.60 requires it, and a driver
    that joins without it is refused with a bare connection error. Ray reads the mode when
    it is imported: call this first."""
    if "RAY_AUTH_MODE" in os.environ or "ray" in sys.modules:
        return  # chosen already, or too late: Ray has read its configuration
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    if os.environ.get("RAY_AUTH_TOKEN") or os.path.isfile(path):
        os.environ["RAY_AUTH_MODE"] = "token"
        log.info("Ray token authentication on (RAY_AUTH_MODE=token)")


@dataclass
class RayBackendStats:
    """The gateway's view of the tier, reported in ``/healthz`` as ``worker``."""

    app_name: str = ""
    connected: bool = False
    lagging: str | None = None
    windows: int = 0
    skipped_stale: int = 0
    evicted: int = 0
    errors: int = 0
    failures: int = 0  # failed or timed-out calls (each one starts or extends the back-off)
    connects: int = 0  # application handles acquired (1 + reconnections)
    lagging_since: float | None = None  # time.monotonic()
    compute_ms: collections.deque[float] = field(
        default_factory=lambda: collections.deque(maxlen=1000)
    )
    batch_sizes: collections.deque[int] = field(
        default_factory=lambda: collections.deque(maxlen=1000)
    )
    replicas: set[str] = field(default_factory=set)

    def as_dict(self) -> dict[str, Any]:
        recent = sorted(self.compute_ms)
        return {
            "backend": "ray",
            "app_name": self.app_name,
            "connected": self.connected,
            "lagging": self.lagging,
            "lagging_s": None
            if self.lagging_since is None
            else round(time.monotonic() - self.lagging_since, 1),
            "windows": self.windows,
            "skipped_stale": self.skipped_stale,
            "evicted": self.evicted,
            "errors": self.errors,
            "failures": self.failures,
            "connects": self.connects,
            "replicas_seen": len(self.replicas),
            "compute_ms_median": recent[len(recent) // 2] if recent else None,
            "batch_size_mean": round(float(np.mean(self.batch_sizes)), 2)
            if self.batch_sizes
            else None,
        }


class RayServeBackend:
    """:class:`~streamer.worker.InferenceBackend` on a shared Ray Serve application.

    Args:
        ray_cfg: the ``worker.ray`` section (address, application name, retries).
        queue_size: most windows waiting for answers; the oldest is skipped beyond it.
        importance: ask for token importance with every window (only when a publisher wants it).
    """

    def __init__(
        self, ray_cfg: RayConfig, *, queue_size: int = 32, importance: bool = True
    ) -> None:
        self.cfg = ray_cfg
        self.queue_size = queue_size
        self.importance = importance
        self.stats = RayBackendStats(app_name=ray_cfg.app_name)
        self._ray: Any = None
        self._serve: Any = None
        self._own_ray = False  # this backend called ray.init (and so shuts it down)
        self._handle: Any = None
        self._handle_lock: asyncio.Lock | None = None
        self._retry_at = 0.0  # time.monotonic() before which no call is sent
        self._backoff_s = ray_cfg.retry_min_s
        # windows waiting for answers, oldest first: id -> (request, the caller's future)
        self._waiting: collections.OrderedDict[
            int, tuple[InferenceRequest, asyncio.Future[InferenceOutcome]]
        ] = collections.OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self._next_id = 0
        self._stopping = False
        self._labels: list[str] | None = None
        self._info: dict[str, Any] | None = None
        self._normalizer: StreamNormalizer | None = None

    # -------------------------------------------------------------- interface
    @property
    def labels(self) -> list[str]:
        assert self._labels is not None, "backend not started"
        return self._labels

    @property
    def model_info(self) -> dict[str, Any]:
        assert self._info is not None, "backend not started"
        return self._info

    @property
    def lagging(self) -> str | None:
        """Why the tier is not answering in time (None: it is)."""
        return self.stats.lagging

    def new_normalizer(self) -> StreamNormalizer | None:
        return copy.deepcopy(self._normalizer)

    async def __aenter__(self) -> RayServeBackend:
        self._ray, self._serve = import_ray()
        self._handle_lock = asyncio.Lock()
        try:
            described = await self._wait_for_app()
        except BaseException:  # a timeout, or interrupted while waiting: leave Ray as found
            await self._shutdown_ray()
            raise
        self._labels = list(described["labels"])
        self._info = dict(described["info"])
        self._normalizer = described["normalizer"]
        self.stats.replicas.add(str(described.get("replica")))
        self.stats.connected = True
        log.info(
            "connected to the Ray Serve application %r (model %s, labels %s)",
            self.cfg.app_name,
            self._info.get("rev"),
            self._labels,
        )
        return self

    async def _wait_for_app(self) -> dict[str, Any]:
        """Connect to Ray and the application, retrying with back-off; its ``describe()``."""
        started = time.monotonic()
        delay = self.cfg.retry_min_s
        while True:
            try:
                await self._connect_ray()
                handle = await self._get_handle()
                described = await asyncio.wait_for(
                    handle.describe.remote(), self.cfg.request_timeout_s
                )
                return dict(described)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                waited = time.monotonic() - started
                why = _why(exc)
                limit = self.cfg.connect_timeout_s
                if limit is not None and waited >= limit:
                    raise EmotionMonitorError(
                        f"the Ray Serve application {self.cfg.app_name!r} is not up after "
                        f"{waited:.0f} s ({why}); start it (emotion-monitor serve-model), check "
                        "worker.ray.address and worker.ray.app_name, or raise worker.ray.connect_timeout_s"
                    ) from None
                sleep_s = delay if limit is None else min(delay, limit - waited)
                log.warning(
                    "waiting for the Ray Serve application %r (%s); retrying in %.1f s",
                    self.cfg.app_name,
                    why,
                    sleep_s,
                )
                self._handle = None
                await asyncio.sleep(sleep_s)
                delay = min(delay * 2, self.cfg.retry_max_s)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stopping = True
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for _, fut in self._waiting.values():
            if not fut.done():
                fut.cancel()
        self._handle = None
        self.stats.connected = False
        await self._shutdown_ray()

    async def probe(self, n_samples: int) -> str | None:
        """See :meth:`InferenceBackend.probe`: the replica runs the check."""
        rng = np.random.default_rng(0)
        quiet_noise = (rng.standard_normal(n_samples) * 0.01).astype(np.float32)
        request = WindowRequest("_probe", 0, 0, n_samples, quiet_noise)
        outcome = await self._submit(request, None, probe=True)
        return outcome.error

    async def infer(
        self, request: InferenceRequest, *, deadline_s: float | None
    ) -> InferenceOutcome:
        """Send ``request`` (a window or a whole utterance, any length) to the tier; ``deadline_s``
        is how long from now it stays worth computing."""
        return await self._submit(request, deadline_s, probe=False)

    # ---------------------------------------------------------------- calls
    async def _submit(
        self, request: InferenceRequest, deadline_s: float | None, *, probe: bool
    ) -> InferenceOutcome:
        if self._stopping:
            raise RuntimeError("inference backend is stopped")
        loop = asyncio.get_running_loop()
        if len(self._waiting) >= self.queue_size:  # bounded: the oldest window gives way
            _, (old_request, oldest) = self._waiting.popitem(last=False)
            self.stats.evicted += 1
            _set(oldest, InferenceOutcome(old_request, skipped="stale"))
        fut: asyncio.Future[InferenceOutcome] = loop.create_future()
        key = self._next_id
        self._next_id += 1
        self._waiting[key] = (request, fut)
        task = asyncio.create_task(self._call(request, deadline_s, probe, fut))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        try:
            return await fut
        finally:
            self._waiting.pop(key, None)
            if not task.done():
                task.cancel()

    async def _call(
        self,
        request: InferenceRequest,
        deadline_s: float | None,
        probe: bool,
        fut: asyncio.Future[InferenceOutcome],
    ) -> None:
        deadline = None if deadline_s is None else time.monotonic() + deadline_s
        payload = {
            "samples": np.ascontiguousarray(request.samples, dtype=np.float32),
            "norm": request.norm,
            "deadline": None if deadline_s is None else time.time() + deadline_s,
            "importance": self.importance,
            "probe": probe,
        }
        while not fut.done():
            now = time.monotonic()
            if deadline is not None and now > deadline:
                self.stats.skipped_stale += 1
                _set(fut, InferenceOutcome(request, skipped="stale"))
                return
            wait_s = self._retry_at - now
            if wait_s > 0:  # backing off: wait, but not past the window's deadline
                if deadline is not None:
                    wait_s = min(wait_s, deadline - now + 1e-3)
                await asyncio.sleep(wait_s)
                continue
            timeout_s = self.cfg.request_timeout_s
            if deadline is not None:
                timeout_s = min(timeout_s, deadline - now + DEADLINE_GRACE_S)
            try:
                handle = await self._get_handle()
                answer = await asyncio.wait_for(handle.remote(payload), timeout_s)
            except asyncio.CancelledError:
                raise
            except asyncio.TimeoutError:
                if deadline is not None and time.monotonic() > deadline:
                    self._lag(f"no answer within the window's deadline from {self.cfg.app_name!r}")
                    continue  # answered stale at the top of the loop
                self._failed(f"no answer within {self.cfg.request_timeout_s:g} s")
                continue
            except Exception as exc:
                self._failed(_why(exc), reconnect=True)
                continue
            _set(fut, self._outcome(request, answer))
            return

    def _outcome(self, request: InferenceRequest, answer: dict[str, Any]) -> InferenceOutcome:
        self.stats.replicas.add(str(answer.get("replica")))
        skipped = answer.get("skipped")
        if skipped == "stale":
            self.stats.skipped_stale += 1
        elif skipped is not None and request.stream_id != "_probe":
            self.stats.errors += 1
        if answer.get("probs") is not None:
            self._recovered()
            self.stats.windows += 1
            self.stats.compute_ms.append(float(answer["compute_ms"]))
            self.stats.batch_sizes.append(int(answer["batch_size"]))
        moments = answer.get("moments")
        imp = answer.get("importance")
        return InferenceOutcome(
            request,
            None if answer.get("probs") is None else np.asarray(answer["probs"]),
            int(answer.get("tokens_in", 0)),
            int(answer.get("tokens_kept", 0)),
            skipped,
            float(answer.get("compute_ms", 0.0)),
            int(answer.get("batch_size", 0)),
            None if moments is None else Moments(float(moments[0]), moments[1], moments[2]),
            importance=None if imp is None else TokenImportance(imp[0], imp[1], int(imp[2])),
            error=answer.get("error"),
        )

    # ----------------------------------------------------------- connection
    def _lag(self, why: str) -> None:
        if self.stats.lagging is None:
            self.stats.lagging_since = time.monotonic()
            log.warning("inference tier lagging: %s", why)
        self.stats.lagging = why

    def _failed(self, why: str, *, reconnect: bool = False) -> None:
        self.stats.failures += 1
        now = time.monotonic()
        if now >= self._retry_at:  # the first failure after a back-off extends it
            self._retry_at = now + self._backoff_s
            self._lag(f"{why}; retrying in {self._backoff_s:.1f} s")
            self._backoff_s = min(self._backoff_s * 2, self.cfg.retry_max_s)
        if reconnect:
            self._handle = None  # look the application up again (it may have been redeployed)
            self.stats.connected = False

    def _recovered(self) -> None:
        self._backoff_s = self.cfg.retry_min_s
        self.stats.connected = True
        if self.stats.lagging is not None:
            since = self.stats.lagging_since or time.monotonic()
            log.info(
                "inference tier %r answers again (lagged %.1f s)",
                self.cfg.app_name,
                time.monotonic() - since,
            )
            self.stats.lagging = None
            self.stats.lagging_since = None

    async def _connect_ray(self) -> None:
        if self._ray.is_initialized():
            return
        address = self.cfg.address or os.environ.get("RAY_ADDRESS") or "auto"
        # On the loop's (main) thread, where Ray installs its handlers; it returns within
        # seconds or fails at once when nothing listens. Only at start-up: streams wait anyway.
        # ray.init replaces SIGTERM's handler with one that exits at once (status 15); the
        # daemon's own handler (graceful stop, or cancelling the start-up) is put back.
        term = signal.getsignal(signal.SIGTERM)
        self._ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        if term is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, term)
        self._own_ray = True

    async def _get_handle(self) -> Any:
        assert self._handle_lock is not None
        async with self._handle_lock:  # one lookup at a time; the others reuse its handle
            if self._handle is None:
                await self._connect_ray()
                self._handle = await asyncio.to_thread(
                    self._serve.get_app_handle, self.cfg.app_name
                )
                self.stats.connects += 1
            return self._handle

    async def _shutdown_ray(self) -> None:
        if self._own_ray and self._ray is not None and self._ray.is_initialized():
            self._own_ray = False
            await asyncio.to_thread(self._ray.shutdown)


def _why(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text[:200]}"


def _set(fut: asyncio.Future[InferenceOutcome], outcome: InferenceOutcome) -> None:
    if not fut.done():
        fut.set_result(outcome)
