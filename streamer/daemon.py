"""The daemon: wires sources, the sans-I/O stream cores, the inference worker and
the publishers from a :class:`DaemonConfig`.

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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from dropformer.errors import EmotionMonitorError
from streamer.config import DaemonConfig, StreamConfig, dashboard_dir, demo_audio_path
from streamer.core.alerts import AlertEvaluator
from streamer.core.events import EmotionEstimate
from streamer.core.events import Event as CoreEvent
from streamer.core.gate import EnergyGate, Gate
from streamer.core.smoother import Smoother
from streamer.core.stream import StreamCore, WindowRequest
from streamer.core.windower import Windower
from streamer.engine import Engine
from streamer.hub import Hub
from streamer.sources.base import Source
from streamer.worker import InferenceBackend, InferenceOutcome, InferenceWorker

log = logging.getLogger(__name__)

MAX_RESTART_S = 60.0


class Daemon:
    """``async with Daemon(cfg) as d: await d.run()`` (or ``await d.run_until(stop)``)."""

    def __init__(self, cfg: DaemonConfig, *, backend: InferenceBackend | None = None) -> None:
        self.cfg = cfg
        self.hub = Hub()
        self.backend: InferenceBackend = backend or self._make_worker()
        self.cores: dict[str, StreamCore] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.websocket: Any = None
        self._stack: contextlib.AsyncExitStack | None = None
        self.started_at = time.monotonic()
        self.alerts: AlertEvaluator | None = None
        self.network: Any = None  # NetworkStats once the network endpoints are set up
        self.ended_streams: dict[str, int] = {"streams": 0}  # summed counters of released streams
        self._network_tasks: dict[str, asyncio.Task[dict[str, int]]] = {}

    # ---------------------------------------------------------------- set-up
    def _make_worker(self) -> InferenceWorker:
        m, w = self.cfg.model, self.cfg.worker

        def load() -> Engine:
            engine = Engine.load(m.checkpoint, device=m.device, frontend_model=m.frontend_model, threads=m.threads,
                                 frontend_overrides=m.frontend or None)
            if m.warm_up:
                seconds = engine.warm_up(round(self.cfg.windowing.window_s * 16000))
                log.info("model warmed up in %.1f s", seconds)
            return engine

        return InferenceWorker(load, max_batch=w.max_batch, max_wait_ms=w.max_wait_ms, queue_size=w.queue_size)

    def _add_publishers(self) -> None:
        p = self.cfg.publish
        if p.websocket.enabled:
            from streamer.publishers.websocket import WebSocketPublisher

            static = dashboard_dir() if p.websocket.dashboard else None
            self.websocket = self.hub.add(
                WebSocketPublisher(
                    p.websocket.host, p.websocket.port, p.websocket.path,
                    static_dir=static if static is not None and static.is_dir() else None,
                    max_queue=p.websocket.max_queue, slow_client_timeout_s=p.websocket.slow_client_timeout_s,
                    snapshot=self.hub.snapshot, health=self.health, importance=p.websocket.importance,
                ),
                "websocket",
            )
        if p.mqtt.enabled:
            import os

            from streamer.publishers.mqtt import MqttPublisher

            password = p.mqtt.password or os.environ.get("EMOTION_MONITOR_MQTT_PASSWORD")
            self.hub.add(
                MqttPublisher(
                    p.mqtt.host, p.mqtt.port, prefix=p.mqtt.prefix, qos=p.mqtt.qos, username=p.mqtt.username,
                    password=password, tls=p.mqtt.tls.model_dump() if p.mqtt.tls else None,
                    client_id=p.mqtt.client_id, keepalive_s=p.mqtt.keepalive_s, max_queue=p.mqtt.max_queue,
                    reconnect_min_s=p.mqtt.reconnect_min_s, reconnect_max_s=p.mqtt.reconnect_max_s,
                    importance=p.mqtt.importance, home_assistant=p.mqtt.home_assistant,
                    discovery_prefix=p.mqtt.discovery_prefix,
                ),
                "mqtt",
            )
        if p.jsonl.enabled:
            from streamer.publishers.jsonl import JsonlSink

            self.hub.add(JsonlSink(p.jsonl.path, rotate_mb=p.jsonl.rotate_mb, importance=p.jsonl.importance), "jsonl")

    async def __aenter__(self) -> Daemon:
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(self.backend)  # loads the model once
            if self.backend.model_info.get("random_init"):
                log.warning("!!! estimates come from an UNTRAINED model (model.random_init=true in every event) !!!")
            self._add_publishers()
            self._add_alerts()
            self._add_network()
            await stack.enter_async_context(self.hub)
            self._stack = stack.pop_all()
        if self.websocket is not None:
            log.info("dashboard and events: http://%s:%d/  (events at ws://%s:%d%s)",
                     self.cfg.publish.websocket.host, self.websocket.port, self.cfg.publish.websocket.host,
                     self.websocket.port, self.cfg.publish.websocket.path)
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self._stop_network_streams()
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()

    def health(self) -> dict[str, Any]:
        worker_stats = getattr(self.backend, "stats", None)
        return {
            "uptime_s": round(time.monotonic() - self.started_at, 1),
            "model": self.backend.model_info,
            "worker": worker_stats.as_dict() if worker_stats is not None else {},
            "streams": {sid: core.counters for sid, core in self.cores.items()},
            "hub": self.hub.stats(),
            **({"network": self.network.as_dict()} if self.network is not None else {}),
            "ended_streams": dict(self.ended_streams),
            **({"alerts": {"fired": self.alerts.fired, "streams": self.alerts.streams}} if self.alerts else {}),
        }

    # ----------------------------------------------------------------- running
    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Run every stream until ``stop`` is set, ``duration_s`` passes, or all streams end."""
        stop = stop or asyncio.Event()
        tasks = [asyncio.create_task(self._supervise(sc), name=f"stream:{sc.id}") for sc in self.cfg.streams]
        waiter = asyncio.create_task(stop.wait())
        try:
            all_done: asyncio.Future[Any] = asyncio.gather(*tasks, return_exceptions=True)
            ends = {waiter, all_done} if tasks else {waiter}  # network only: run until stopped
            await asyncio.wait(ends, timeout=self.cfg.duration_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._stop_network_streams()

    def publish(self, event: CoreEvent) -> None:
        self.hub.publish(event.to_dict())
        if self.alerts is not None and isinstance(event, EmotionEstimate):
            for alert in self.alerts.update(event):
                log.info("alert %s on %s: %s", alert.kind, alert.stream_id, alert.message)
                self.hub.publish(alert.to_dict())

    def _make_core(self, sc: StreamConfig) -> StreamCore:
        c = self.cfg
        gate: Gate | None
        if c.gate.kind == "energy":
            gate = EnergyGate(
                frame_ms=c.gate.frame_ms, threshold_dbfs=c.gate.threshold_dbfs,
                hysteresis_db=c.gate.hysteresis_db, min_speech_share=c.gate.min_speech_share,
            )
        elif c.gate.kind == "silero":
            from streamer.silero_gate import SileroGate

            gate = SileroGate(threshold=c.gate.vad_threshold, min_speech_share=c.gate.min_speech_share)
        else:
            gate = None
        labels = self.backend.labels
        return StreamCore(
            sc.id, labels,
            windower=Windower(window_s=c.windowing.window_s, hop_s=c.windowing.hop_s,
                              first_window=c.windowing.first_window, min_window_s=c.windowing.min_window_s),
            gate=gate,
            smoother=Smoother(
                labels, time_constant_s=c.smoothing.time_constant_s, switch_margin=c.smoothing.switch_margin,
                min_dwell_s=c.smoothing.min_dwell_s, silence=c.smoothing.silence,
                decay_time_constant_s=c.smoothing.decay_time_constant_s,
                neutral_label="neutral",  # uniform target when the model has no neutral class
            ),
            model_info=self.backend.model_info,
            silent_estimates=c.smoothing.silent_estimates,
            normalizer=self.backend.new_normalizer(),
            importance=c.publish.importance,
        )

    def _make_source(self, sc: StreamConfig) -> tuple[Source, bool]:
        src = sc.source
        if src.kind == "file":
            from streamer.sources.file import FileSource

            path = src.path or str(demo_audio_path())
            return FileSource(path, sc.id, realtime=src.realtime, block_ms=src.block_ms, loop=src.loop), src.realtime
        from streamer.sources.microphone import MicrophoneSource

        return MicrophoneSource(src.device, sc.id, block_ms=src.block_ms, queue_blocks=src.queue_blocks,
                                channels=src.channels, sample_rate_hz=src.sample_rate_hz), True

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
                if not isinstance(exc, (EmotionMonitorError, OSError)):
                    log.exception("stream %s crashed", sc.id)
                else:
                    log.error("stream %s failed: %s%s", sc.id, exc, f"; retrying in {delay:.1f} s" if retry else "")
                if not retry or delay is None:
                    return
                await asyncio.sleep(delay)
                delay = min(max(delay * 2, 1.0), MAX_RESTART_S)

    async def _run_stream(self, sc: StreamConfig, network_source: Source | None = None) -> None:
        """Run one stream: its configured source, or ``network_source`` (live, from a session)."""
        core = self._make_core(sc)
        self.cores[sc.id] = core
        # Silero VAD costs ~45 ms per window: gate on a thread, never on the loop. The
        # lock keeps the core single-threaded (results wait while a push runs).
        lock = self._locks[sc.id] = asyncio.Lock()
        off_loop = self.cfg.gate.kind == "silero"
        self.publish(core.start())
        pending: set[asyncio.Task[None]] = set()
        error: str | None = None
        heartbeat = asyncio.create_task(self._heartbeat(core)) if self.cfg.status_interval_s else None
        try:
            source, realtime = self._make_source(sc) if network_source is None else (network_source, True)
            stale_s = self.cfg.worker.stale_after_s if realtime else None
            async with source:
                dropped_seen = 0

                def count_dropped() -> None:
                    nonlocal dropped_seen
                    dropped = source.stats.dropped_frames + source.stats.overflows
                    if dropped > dropped_seen:
                        core.count_dropped_frames(dropped - dropped_seen)
                        dropped_seen = dropped

                async for frames in source:
                    count_dropped()
                    async with lock:
                        items = await asyncio.to_thread(core.push, frames) if off_loop else core.push(frames)
                    await self._handle(core, items, stale_s, pending)
                count_dropped()
                await self._handle(core, core.flush(), stale_s, pending)
            if pending:
                await asyncio.gather(*pending)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}" if not isinstance(exc, EmotionMonitorError) else str(exc)
            raise
        finally:
            for t in pending:
                t.cancel()
            if heartbeat is not None:
                heartbeat.cancel()
            self.publish(core.stop(error=error))

    # ------------------------------------------------------- network streams
    def _add_alerts(self) -> None:
        from streamer.alerts import make_evaluator, make_webhook

        self.alerts = make_evaluator(self.cfg.alerts, self.backend.labels)
        webhook = make_webhook(self.cfg.alerts.webhook)
        if webhook is not None:
            self.hub.add(webhook, "webhook")

    def _add_network(self) -> None:
        if self.cfg.ingest.enabled and not self.cfg.publish.websocket.enabled:
            log.info("no /ingest endpoint: publish.websocket is disabled")
        if self.cfg.network_enabled and self.websocket is not None:
            from streamer.sources.ingest import install_endpoints

            self.network = install_endpoints(self, self.cfg.ingest, self.websocket)

    def open_network_stream(
        self, stream_id: str, source: Source, *, role: str | None = None
    ) -> asyncio.Task[dict[str, int]] | None:
        """Start a stream fed by a network session; ``None`` when ``stream_id`` is in use.

        The task returns the stream's final counters once the source ended, the
        ``offline`` status went out and the stream's state was released.
        """
        if stream_id in self.cores or stream_id in self._network_tasks or any(s.id == stream_id for s in self.cfg.streams):
            return None
        task = asyncio.create_task(self._run_network_stream(StreamConfig(id=stream_id), source, role),
                                   name=f"stream:{stream_id}")
        self._network_tasks[stream_id] = task
        return task

    async def _run_network_stream(self, sc: StreamConfig, source: Source, role: str | None) -> dict[str, int]:
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
            self.hub.forget(sc.id)
            self.ended_streams["streams"] += 1
            for key, value in (core.counters if core is not None else {}).items():
                self.ended_streams[key] = self.ended_streams.get(key, 0) + value
        return core.counters if core is not None else {}

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
        self, core: StreamCore, items: list[WindowRequest | CoreEvent], stale_s: float | None,
        pending: set[asyncio.Task[None]],
    ) -> None:
        for item in items:
            if not isinstance(item, WindowRequest):
                self.publish(item)
            elif stale_s is None:
                await self._infer(core, item, None)  # batch analysis: wait, skip nothing
            else:
                task = asyncio.create_task(self._infer(core, item, stale_s))
                pending.add(task)
                task.add_done_callback(pending.discard)

    async def _infer(self, core: StreamCore, req: WindowRequest, stale_s: float | None) -> None:
        t0 = time.monotonic()
        outcome = await self.backend.infer(req, deadline_s=stale_s)
        async with self._locks[core.stream_id]:
            events = self._apply(core, req, outcome, t0)
        for ev in events:
            self.publish(ev)

    @staticmethod
    def _apply(core: StreamCore, req: WindowRequest, outcome: InferenceOutcome, t0: float) -> list[CoreEvent]:
        if outcome.skipped is not None or outcome.probs is None:
            events = core.on_skipped(req.seq, outcome.skipped or "error")
        else:
            latency_ms = (time.monotonic() - t0) * 1000.0
            events = core.on_result(req.seq, outcome.probs, outcome.tokens_in, outcome.tokens_kept, latency_ms,
                                    outcome.moments, importance=outcome.importance)
        return events


async def run_daemon(cfg: DaemonConfig, *, install_signals: bool = True, on_ready: Callable[[Daemon], None] | None = None) -> None:
    """Start the daemon, stop on SIGINT/SIGTERM, shut down gracefully."""
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    if install_signals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
    try:
        async with Daemon(cfg) as daemon:
            if on_ready is not None:
                on_ready(daemon)
            await daemon.run(stop)
            log.info("shutting down: %s", daemon.health()["streams"])
    finally:
        if install_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)

