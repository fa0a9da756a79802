"""The daemon: starts, supervises and stops the parts :mod:`streamer.wiring` builds
from a :class:`DaemonConfig` (sources, the sans-I/O stream cores, the inference
worker, the publishers).

Each stream runs in its own task. A stream that fails (a device that vanishes,
a file that is not audio) publishes ``stream.status`` = ``error`` and, where a
retry can help (microphones), starts again after a back-off; the other streams
never notice. Shutdown (SIGINT/SIGTERM, ``duration_s``, or every configured
stream ended) publishes each stream's final ``offline`` status, then closes the
publishers, which flush files and mark MQTT topics offline.

Network streams (``/ingest`` sessions, the legs of Twilio calls) are created at
run time through :meth:`Daemon.open_network_stream` and take the same path as
configured ones (:meth:`Daemon._run_stream`). When one ends, its ``offline``
status is published and every piece of its state is released (core, lock,
snapshot, alert state, retained-topic cache); its counters are added to
``ended_streams`` in ``/healthz``. With no configured streams the daemon runs
until it is stopped.

Losses are counted where users look: each stream's ``stream.status`` carries,
besides the core's counters, what every publisher lost of that stream
(``lost_websocket``, ``lost_mqtt``, ``lost_jsonl``, ``lost_webhook``); the
status heartbeat re-publishes them every ``status_interval_s``, a log line
gives the running totals whenever they grew, and the shutdown summary (logged
after the publishers closed, so what they could not deliver is in it) lists
every stream's counters. A microphone that restarts goes on with the same
``seq`` and audio time (``StreamCore(continues=...)``).

:func:`run_daemon` returns the exit status: 1 when configured streams exist
and none of them ever produced audio (every source failed), saying why.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from dropformer.errors import EmotionMonitorError
from streamer import wiring
from streamer.config import DaemonConfig, StreamConfig
from streamer.core.alerts import AlertEvaluator
from streamer.core.events import EmotionEstimate, Event, StreamStatus
from streamer.core.stream import InferenceRequest, StreamCore, UtteranceRequest, WindowRequest
from streamer.hub import Hub
from streamer.sources.base import OUTPUT_RATE_HZ, Source
from streamer.worker import InferenceBackend, InferenceOutcome

log = logging.getLogger(__name__)

MAX_RESTART_S = 60.0
LOSS_REPORT_S = 10.0
"""How often the running loss totals are checked (and logged when they grew) without a heartbeat."""
#: stream counters that count analysis lost (in the running totals and the summary)
STREAM_LOSSES = (
    "skipped_stale",
    "dropped_frames",
    "lost_results",
    "inference_errors",
    "bad_results",
    "skipped_utterances",
)


class Daemon:
    """``async with Daemon(cfg) as d: await d.run()`` (or ``await d.run(stop)``)."""

    def __init__(self, cfg: DaemonConfig, *, backend: InferenceBackend | None = None) -> None:
        self.cfg = cfg
        self.hub = Hub()
        self.backend: InferenceBackend = backend or wiring.make_worker(
            cfg.model,
            cfg.worker,
            round(cfg.windowing.window_s * OUTPUT_RATE_HZ),
            importance=cfg.publish.importance,
        )
        self.cores: dict[str, StreamCore] = {}
        self.sources: dict[str, Source] = {}  # each running stream's source
        self._locks: dict[str, asyncio.Lock] = {}
        self.websocket: Any = None
        self._stack: contextlib.AsyncExitStack | None = None
        self.started_at = time.monotonic()
        self.alerts: AlertEvaluator | None = None
        self.network: Any = None  # NetworkStats once the network endpoints are set up
        self.api: Any = None  # the POST /v1/analyze service, when served
        self.ended_streams: dict[str, int] = {"streams": 0}  # summed counters of released streams
        self._network_tasks: dict[str, asyncio.Task[dict[str, int]]] = {}
        self.with_audio: set[str] = set()  # streams whose source delivered audio
        self.failures: dict[str, str] = {}  # stream id -> why it last failed
        self.summary: dict[str, Any] | None = None  # the shutdown summary, once stopped
        self._losses_reported: dict[str, int] = {}

    # ---------------------------------------------------------------- set-up
    async def __aenter__(self) -> Daemon:
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(self.backend)  # loads the model once
            if self.backend.model_info.get("random_init"):
                log.warning(
                    "!!! estimates come from an UNTRAINED model (model.random_init=true in every event) !!!"
                )
            await wiring.check_pipeline(self.cfg, self.backend)
            self.websocket = wiring.add_publishers(self.cfg, self.hub, health=self.health)
            self.alerts = wiring.add_alerts(self.cfg, self.backend.labels, self.hub)
            self._add_network()
            self.api = wiring.add_api(self.cfg, self.websocket)  # POST /v1/analyze
            if self.api is not None:
                await stack.enter_async_context(self.api)
            if self.cfg.insecure:
                log.warning(
                    "!!! listening on %s WITHOUT A TOKEN (access.allow_insecure): anyone who can reach "
                    "port %d reads every estimate and may send audio. Set EMOTION_MONITOR_TOKEN. !!!",
                    self.cfg.publish.websocket.host,
                    self.cfg.publish.websocket.port,
                )
            await stack.enter_async_context(self.hub)
            self._stack = stack.pop_all()
        if self.websocket is not None:
            log.info(
                "dashboard and events: http://%s:%d/  (events at ws://%s:%d%s)",
                self.cfg.publish.websocket.host,
                self.websocket.port,
                self.cfg.publish.websocket.host,
                self.websocket.port,
                self.cfg.publish.websocket.path,
            )
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self._stop_network_streams()
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()
            self._log_summary()  # after the publishers closed: what they could not deliver is in it

    # ----------------------------------------------------------------- losses
    def _counters(self, core: StreamCore) -> dict[str, int]:
        """A stream's counters with what each publisher lost of it."""
        return {**core.counters, **self.hub.losses(core.stream_id)}

    def losses(self) -> dict[str, int]:
        """Running totals of everything lost: per publisher, and the streams' analysis losses."""
        totals = {f"lost_{name}": n for name, n in self.hub.lost_total().items()}
        if self.hub.invalid:
            totals["invalid_events"] = self.hub.invalid
        for key in STREAM_LOSSES:
            totals[key] = self.ended_streams.get(key, 0) + sum(
                c.counters.get(key, 0) for c in self.cores.values()
            )
        return totals

    def _report_losses(self) -> None:
        """Log the running loss totals when they grew since the last report."""
        totals = self.losses()
        grown = {
            k: v - self._losses_reported.get(k, 0)
            for k, v in totals.items()
            if v > self._losses_reported.get(k, 0)
        }
        if grown:
            log.warning(
                "lost so far: %s (since the last report: %s)",
                ", ".join(f"{k} {v}" for k, v in totals.items() if v),
                ", ".join(f"{k} +{v}" for k, v in grown.items()),
            )
        self._losses_reported = totals

    async def _loss_reporter(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.status_interval_s or LOSS_REPORT_S)
            self._report_losses()

    def _log_summary(self) -> None:
        self.summary = {
            "streams": {sid: self._counters(core) for sid, core in self.cores.items()},
            "ended_streams": dict(self.ended_streams),
            "publishers": self.hub.stats()["publishers"],
            "lost": self.losses(),
        }
        level = logging.WARNING if any(self.summary["lost"].values()) else logging.INFO
        log.log(level, "shutdown summary: %s", json.dumps(self.summary, separators=(",", ":")))

    def exit_problem(self) -> str | None:
        """Why the run failed as a whole (configured streams, none of which ever produced
        audio, with a failure to tell), else ``None``."""
        if (
            not self.cfg.streams
            or self.with_audio
            or not self.failures
            or self.ended_streams["streams"]
        ):
            return None
        why = "; ".join(f"{sid}: {text}" for sid, text in self.failures.items())
        return f"no stream produced any audio ({why}); fix the sources (streams.N.source) and start again"

    def health(self) -> dict[str, Any]:
        worker_stats = getattr(self.backend, "stats", None)
        return {
            "uptime_s": round(time.monotonic() - self.started_at, 1),
            "model": self.backend.model_info,
            "worker": worker_stats.as_dict() if worker_stats is not None else {},
            "streams": {sid: self._counters(core) for sid, core in self.cores.items()},
            "hub": self.hub.stats(),
            **({"network": self.network.as_dict()} if self.network is not None else {}),
            **({"api": self.api.stats()} if self.api is not None else {}),
            "ended_streams": dict(self.ended_streams),
            "lost": self.losses(),
            **(
                {"alerts": {"fired": self.alerts.fired, "streams": self.alerts.streams}}
                if self.alerts
                else {}
            ),
        }

    # ----------------------------------------------------------------- running
    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Run every stream until ``stop`` is set, ``duration_s`` passes, or all streams end."""
        stop = stop or asyncio.Event()
        tasks = [
            asyncio.create_task(self._supervise(sc), name=f"stream:{sc.id}")
            for sc in self.cfg.streams
        ]
        waiter = asyncio.create_task(stop.wait())
        reporter = asyncio.create_task(self._loss_reporter())
        try:
            all_done: asyncio.Future[Any] = asyncio.gather(*tasks, return_exceptions=True)
            ends = {waiter, all_done} if tasks else {waiter}  # network only: run until stopped
            await asyncio.wait(
                ends, timeout=self.cfg.duration_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            waiter.cancel()
            reporter.cancel()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._stop_network_streams()
            self._report_losses()

    def publish(self, event: Event) -> None:
        """Hand ``event`` to the hub (a stream's status with its publishers' losses), then
        feed estimates to the alert rules."""
        if isinstance(event, StreamStatus):
            lagging = getattr(self.backend, "lagging", None)  # a remote tier that is not answering
            event = dataclasses.replace(
                event,
                counters={**event.counters, **self.hub.losses(event.stream_id)},
                detail=event.detail
                or (
                    f"inference lagging: {lagging}"
                    if lagging and event.state != "offline"
                    else None
                ),
            )
        self.hub.publish(event.to_dict())
        if self.alerts is not None and isinstance(event, EmotionEstimate):
            for alert in self.alerts.update(event):
                log.info("alert %s on %s: %s", alert.kind, alert.stream_id, alert.message)
                self.hub.publish(alert.to_dict())

    async def _supervise(self, sc: StreamConfig) -> None:
        """Run one stream; restart it after failures where that can help."""
        delay = sc.restart_s
        while True:
            try:
                await self._run_stream(sc)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # isolate every failure to this stream
                retry = delay is not None and sc.source.kind == "microphone"
                self.failures[sc.id] = (
                    str(exc)
                    if isinstance(exc, EmotionMonitorError)
                    else f"{type(exc).__name__}: {exc}"
                )
                if not isinstance(exc, (EmotionMonitorError, OSError)):
                    log.exception("stream %s crashed", sc.id)
                else:
                    log.error(
                        "stream %s failed: %s%s",
                        sc.id,
                        exc,
                        f"; retrying in {delay:.1f} s" if retry else "",
                    )
                if not retry or delay is None:
                    return
                await asyncio.sleep(delay)
                delay = min(max(delay * 2, 1.0), MAX_RESTART_S)

    async def _run_stream(self, sc: StreamConfig, network_source: Source | None = None) -> None:
        """Run one stream: its configured source, or ``network_source`` (live, from a session).
        A configured stream that runs again (a restart) goes on from its previous core."""
        core = wiring.make_core(self.cfg, sc.id, self.backend, continues=self.cores.get(sc.id))
        self.cores[sc.id] = core
        # Silero VAD costs ~45 ms per window: gate on a thread, never on the loop. The
        # lock keeps the core single-threaded (results wait while a push runs).
        lock = self._locks[sc.id] = asyncio.Lock()
        off_loop = self.cfg.gate.kind == "silero"
        self.publish(core.start())
        pending: set[asyncio.Task[None]] = set()
        error: str | None = None
        heartbeat = (
            asyncio.create_task(self._heartbeat(core)) if self.cfg.status_interval_s else None
        )
        try:
            source, realtime = (
                wiring.make_source(sc) if network_source is None else (network_source, True)
            )
            stale_s = self.cfg.worker.stale_after_s if realtime else None
            self.sources[sc.id] = source
            async with source:
                dropped_seen = 0

                def count_dropped() -> None:
                    nonlocal dropped_seen
                    dropped = source.stats.dropped_frames + source.stats.overflows
                    if dropped > dropped_seen:
                        core.count_dropped_frames(dropped - dropped_seen)
                        dropped_seen = dropped

                async for frames in source:
                    if frames.size:
                        self.with_audio.add(sc.id)
                    count_dropped()
                    async with lock:
                        items = (
                            await asyncio.to_thread(core.push, frames)
                            if off_loop
                            else core.push(frames)
                        )
                    await self._handle(core, items, stale_s, pending)
                count_dropped()
                await self._handle(core, core.flush(), stale_s, pending)
            if pending:
                await asyncio.gather(*pending)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error = (
                f"{type(exc).__name__}: {exc}"
                if not isinstance(exc, EmotionMonitorError)
                else str(exc)
            )
            raise
        finally:
            for t in pending:
                t.cancel()
            self.sources.pop(sc.id, None)
            if heartbeat is not None:
                heartbeat.cancel()
            self.publish(core.stop(error=error))

    # ------------------------------------------------------- network streams
    def _add_network(self) -> None:
        if self.cfg.ingest.enabled and not self.cfg.publish.websocket.enabled:
            log.info("no /ingest endpoint: publish.websocket is disabled")
        if self.cfg.network_enabled and self.websocket is not None:
            from streamer.sources.ingest import install_endpoints

            self.network = install_endpoints(
                self, self.cfg.ingest, self.websocket, token=self.cfg.access.bearer_token()
            )

    def open_network_stream(
        self, stream_id: str, source: Source, *, role: str | None = None
    ) -> asyncio.Task[dict[str, int]] | None:
        """Start a stream fed by a network session; ``None`` when ``stream_id`` is in use.

        The task returns the stream's final counters once the source ended, the
        ``offline`` status went out and the stream's state was released.
        """
        if (
            stream_id in self.cores
            or stream_id in self._network_tasks
            or any(s.id == stream_id for s in self.cfg.streams)
        ):
            return None
        task = asyncio.create_task(
            self._run_network_stream(StreamConfig(id=stream_id), source, role),
            name=f"stream:{stream_id}",
        )
        self._network_tasks[stream_id] = task
        return task

    async def _run_network_stream(
        self, sc: StreamConfig, source: Source, role: str | None
    ) -> dict[str, int]:
        if self.alerts is not None:
            self.alerts.open(sc.id, role)
        try:
            await self._run_stream(sc, source)
        except Exception as exc:
            log.error("network stream %s failed: %s", sc.id, exc)
            raise
        finally:
            core = self.cores.pop(sc.id, None)
            self._locks.pop(sc.id, None)
            self._network_tasks.pop(sc.id, None)
            if self.alerts is not None:
                self.alerts.close(sc.id)
            counters = self._counters(core) if core is not None else {}
            self.hub.forget(sc.id)
            self.ended_streams["streams"] += 1
            for key, value in counters.items():
                self.ended_streams[key] = self.ended_streams.get(key, 0) + value
        return counters

    async def _stop_network_streams(self) -> None:
        """End every network stream (shutdown): each publishes offline and is released."""
        tasks = list(self._network_tasks.values())
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _heartbeat(self, core: StreamCore) -> None:
        assert self.cfg.status_interval_s is not None
        while True:
            await asyncio.sleep(self.cfg.status_interval_s)
            async with self._locks[core.stream_id]:
                self.publish(core.status())

    async def _handle(
        self,
        core: StreamCore,
        items: list[InferenceRequest | Event],
        stale_s: float | None,
        pending: set[asyncio.Task[None]],
    ) -> None:
        for item in items:
            if not isinstance(item, (WindowRequest, UtteranceRequest)):
                self.publish(item)
            elif stale_s is None:
                await self._infer(core, item, None)  # batch analysis: wait, skip nothing
            else:
                task = asyncio.create_task(self._infer(core, item, stale_s))
                pending.add(task)
                task.add_done_callback(pending.discard)

    async def _infer(self, core: StreamCore, req: InferenceRequest, stale_s: float | None) -> None:
        t0 = time.monotonic()
        outcome = await self.backend.infer(req, deadline_s=stale_s)
        async with self._locks[core.stream_id]:
            events = self._apply(core, req, outcome, t0)
        for ev in events:
            self.publish(ev)

    @staticmethod
    def _apply(
        core: StreamCore, req: InferenceRequest, outcome: InferenceOutcome, t0: float
    ) -> list[Event]:
        latency_ms = (time.monotonic() - t0) * 1000.0
        if isinstance(req, UtteranceRequest):
            if outcome.skipped is not None or outcome.probs is None:
                return core.on_utterance_skipped(req.seq, outcome.skipped or "error")
            return core.on_utterance_result(
                req.seq, outcome.probs, outcome.tokens_in, outcome.tokens_kept, latency_ms
            )
        if outcome.skipped is not None or outcome.probs is None:
            events = core.on_skipped(req.seq, outcome.skipped or "error")
        else:
            events = core.on_result(
                req.seq,
                outcome.probs,
                outcome.tokens_in,
                outcome.tokens_kept,
                latency_ms,
                outcome.moments,
                importance=outcome.importance,
            )
        return events


async def run_daemon(
    cfg: DaemonConfig,
    *,
    install_signals: bool = True,
    on_ready: Callable[[Daemon], None] | None = None,
) -> int:
    """Start the daemon, stop on SIGINT/SIGTERM, shut down gracefully; the exit status
    (1 when no configured stream ever produced audio, see :meth:`Daemon.exit_problem`)."""
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    starting, interrupted = True, False

    def on_signal() -> None:
        nonlocal interrupted
        stop.set()
        if starting and not interrupted and task is not None:
            # still starting (loading the model, or waiting for a Ray Serve tier that is not up
            # yet): cancel the start-up, which unwinds what it had started
            interrupted = True
            task.cancel()

    if install_signals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, on_signal)
    try:
        try:
            async with Daemon(cfg) as daemon:
                starting = False
                if on_ready is not None:
                    on_ready(daemon)
                await daemon.run(stop)
                log.info("shutting down")
        except asyncio.CancelledError:
            if not interrupted or task is None or not starting:
                raise
            task.uncancel()
            log.info("stopped while starting")
            return 0
        problem = daemon.exit_problem()
        if problem is not None:
            log.error("%s", problem)
            return 1
        return 0
    finally:
        if install_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)
