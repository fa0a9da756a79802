"""Builds the daemon's parts from their config sections: the one place where the
config meets the constructors.

The config models (:mod:`streamer.config`) validate every value and name the
key and the fix; the parts built here trust them. What can only be checked
once the model is loaded (its labels, the shortest window its front end can
take) is checked by :func:`check_pipeline` at start-up, with the same kind of
message, before any stream starts.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from dropformer.errors import ConfigError
from streamer.access import AccessPolicy
from streamer.config import (
    DaemonConfig,
    GateConfig,
    ModelConfig,
    StreamConfig,
    WorkerConfig,
    dashboard_dir,
    demo_audio_path,
)
from streamer.core.affect import unplaced
from streamer.core.gate import EnergyGate, Gate
from streamer.core.smoother import Smoother
from streamer.core.stream import StreamCore
from streamer.core.utterances import UtterancePolicy
from streamer.core.windower import Windower
from streamer.hub import Hub
from streamer.sources.base import OUTPUT_RATE_HZ, Source

if TYPE_CHECKING:
    from streamer.core.alerts import AlertEvaluator
    from streamer.http_api import AnalysisService
    from streamer.publishers.websocket import WebSocketPublisher
    from streamer.worker import InferenceBackend

log = logging.getLogger(__name__)


def make_worker(
    model: ModelConfig,
    worker: WorkerConfig,
    window_samples: int = 48000,
    *,
    importance: bool = True,
) -> InferenceBackend:
    """The inference backend of ``worker.backend``: the in-process worker (it loads the model
    when entered, and warms it up on one window of ``window_samples`` when ``model.warm_up``),
    or the shared Ray Serve tier (``ray``: the model runs there; ``importance`` says whether
    to ask for token importance)."""
    if worker.backend == "ray":
        from streamer.ray_backend import RayServeBackend

        return RayServeBackend(worker.ray, queue_size=worker.queue_size, importance=importance)
    from streamer.engine import Engine
    from streamer.worker import InferenceWorker

    def load() -> Engine:
        engine = Engine.load(
            model.checkpoint,
            device=model.device,
            frontend_model=model.frontend_model,
            threads=model.threads,
            frontend_overrides=model.frontend or None,
        )
        if model.warm_up:
            try:
                log.info("model warmed up in %.1f s", engine.warm_up(window_samples))
            except (
                RuntimeError,
                ValueError,
            ) as exc:  # a window it cannot take: check_pipeline says which key
                log.debug("model warm-up skipped: %s", exc)
        return engine

    return InferenceWorker(
        load,
        max_batch=worker.max_batch,
        max_wait_ms=worker.max_wait_ms,
        queue_size=worker.queue_size,
    )


def make_gate(gate: GateConfig) -> Gate | None:
    """The speech gate of ``gate.kind`` (``None``: every window is speech)."""
    if gate.kind == "energy":
        return EnergyGate(
            frame_ms=gate.frame_ms,
            threshold_dbfs=gate.threshold_dbfs,
            hysteresis_db=gate.hysteresis_db,
            min_speech_share=gate.min_speech_share,
            noise_floor_margin_db=gate.noise_floor_margin_db,
            noise_floor_rise=gate.noise_floor_rise,
        )
    if gate.kind == "silero":
        from streamer.silero_gate import SileroGate

        return SileroGate(threshold=gate.vad_threshold, min_speech_share=gate.min_speech_share)
    return None


def make_core(
    cfg: DaemonConfig,
    stream_id: str,
    backend: InferenceBackend,
    *,
    continues: StreamCore | None = None,
) -> StreamCore:
    """A stream's sans-I/O core: windower, gate, smoother and utterance policy from their sections."""
    w, s, u = cfg.windowing, cfg.smoothing, cfg.utterance
    labels = backend.labels
    return StreamCore(
        stream_id,
        labels,
        windower=Windower(
            window_s=w.window_s,
            hop_s=w.hop_s,
            first_window=w.first_window,
            min_window_s=w.min_window_s,
        ),
        gate=make_gate(cfg.gate),
        smoother=Smoother(
            labels,
            time_constant_s=s.time_constant_s,
            switch_margin=s.switch_margin,
            min_dwell_s=s.min_dwell_s,
            silence=s.silence,
            decay_time_constant_s=s.decay_time_constant_s,
            neutral_label=s.neutral_label or "",  # not a label: decay toward uniform scores
        ),
        model_info=backend.model_info,
        silent_estimates=s.silent_estimates,
        normalizer=backend.new_normalizer(),
        importance=cfg.publish.importance,
        utterances=(
            UtterancePolicy(max_s=u.max_s, min_s=u.min_s, end_silence_s=u.end_silence_s)
            if u.enabled
            else None
        ),
        quality=cfg.quality.enabled,
        continues=continues,
    )


def make_source(sc: StreamConfig) -> tuple[Source, bool]:
    """A configured stream's source, and whether it is live (real time: stale windows are skipped)."""
    src = sc.source
    if src.kind == "file":
        from streamer.sources.file import FileSource

        path = src.path or str(demo_audio_path())
        return FileSource(
            path,
            sc.id,
            realtime=src.realtime,
            block_ms=src.block_ms,
            loop=src.loop,
            channel=src.channel,
        ), src.realtime
    from streamer.sources.microphone import MicrophoneSource

    return MicrophoneSource(
        src.device,
        sc.id,
        block_ms=src.block_ms,
        queue_blocks=src.queue_blocks,
        channels=src.channels,
        sample_rate_hz=src.sample_rate_hz,
    ), True


def add_publishers(cfg: DaemonConfig, hub: Hub, *, health: Any = None) -> WebSocketPublisher | None:
    """Add the enabled publishers to ``hub`` (names: websocket, mqtt, jsonl); returns the
    WebSocket server (the network endpoints are served on its port) if enabled."""
    p = cfg.publish
    websocket = None
    if p.websocket.enabled:
        from streamer.publishers.websocket import WebSocketPublisher

        static = dashboard_dir() if p.websocket.dashboard else None
        websocket = hub.add(
            WebSocketPublisher(
                p.websocket,
                access=AccessPolicy.from_config(cfg.access, p.websocket.host),
                static_dir=static if static is not None and static.is_dir() else None,
                snapshot=hub.snapshot,
                health=health,
            ),
            "websocket",
        )
    if p.mqtt.enabled:
        from streamer.publishers.mqtt import MqttPublisher

        hub.add(MqttPublisher(p.mqtt), "mqtt")
    if p.jsonl.enabled:
        from streamer.publishers.jsonl import JsonlSink

        hub.add(JsonlSink(p.jsonl), "jsonl")
    return websocket


def add_api(cfg: DaemonConfig, websocket: WebSocketPublisher | None) -> AnalysisService | None:
    """``POST /v1/analyze`` on the WebSocket server's port (None when ``api.enabled`` is off
    or there is no server); enter the service before the server starts."""
    if not cfg.api.enabled or websocket is None:
        return None
    from streamer.http_api import PATH, AnalysisService

    service = AnalysisService(cfg)
    websocket.add_post_route(PATH, service.route())
    return service


def add_alerts(cfg: DaemonConfig, labels: list[str], hub: Hub) -> AlertEvaluator | None:
    """The alert evaluator of ``alerts.rules`` (None without rules); the webhook joins ``hub``."""
    from streamer.alerts import make_evaluator, make_webhook

    webhook = make_webhook(cfg.alerts.webhook)
    if webhook is not None:
        hub.add(webhook, "webhook")
    return make_evaluator(cfg.alerts, labels)


async def check_pipeline(cfg: DaemonConfig, backend: InferenceBackend) -> None:
    """Refuse, at start-up, values that passed validation but that the loaded model cannot
    serve: a smoothing.neutral_label it does not have, windows or utterances shorter than its
    front end takes (a default utterance.min_s is raised to what it takes instead), utterances
    longer than it takes. Raises :class:`ConfigError` naming the key and the fix. Labels with no
    arousal/valence position are served (as the neutral centre), with a warning."""
    labels = backend.labels
    s = cfg.smoothing
    if s.neutral_label is not None and s.neutral_label not in labels:
        if "neutral_label" in s.model_fields_set:
            raise ConfigError(
                f"smoothing.neutral_label={s.neutral_label!r} is not a label of the model {labels}; "
                "use one of them, or null to decay toward uniform scores"
            )
        log.info("the model has no %r label: silence decays toward uniform scores", s.neutral_label)
    if missing := unplaced(labels):
        log.warning(
            "the model's labels %s have no arousal/valence position (streamer/core/affect.py): "
            "they count as the neutral centre (0, 0) in arousal and valence",
            missing,
        )
    w, u = cfg.windowing, cfg.utterance
    shortest_s = min(w.min_window_s, w.window_s)
    checks = [("windowing.min_window_s", shortest_s), ("windowing.window_s", w.window_s)]
    if u.enabled:
        checks += [("utterance.min_s", u.min_s), ("utterance.max_s", u.max_s)]
    for key, seconds in checks:
        n = round(seconds * OUTPUT_RATE_HZ)
        problem = await backend.probe(n)
        if problem is None:
            continue
        if key == "utterance.max_s":
            raise ConfigError(
                f"utterance.max_s={seconds:g} s: the model ({backend.model_info.get('frontend')}) "
                f"cannot classify {n} samples ({problem}); lower utterance.max_s"
            )
        need = await _shortest_window(backend, n)
        if key == "utterance.min_s" and "min_s" not in u.model_fields_set and need is not None:
            log.info(
                "the model takes no utterance shorter than %.3f s: utterance.min_s raised to that",
                need / OUTPUT_RATE_HZ,
            )
            u.min_s = min(need / OUTPUT_RATE_HZ, u.max_s)
            continue
        keys = (
            "utterance.min_s"
            if key == "utterance.min_s"
            else "windowing.window_s and windowing.min_window_s"
        )
        fix = (
            f"set {keys} to at least {need / OUTPUT_RATE_HZ:.3f} s"
            if need is not None
            else "use a longer window or another model"
        )
        raise ConfigError(
            f"{key}={seconds:g} s: the model ({backend.model_info.get('frontend')}) cannot "
            f"classify a window of {n} samples ({problem}); {fix}"
        )


async def _shortest_window(backend: InferenceBackend, failing: int) -> int | None:
    """The shortest window (samples) the model takes, found by bisection above ``failing``."""
    high = max(failing * 2, OUTPUT_RATE_HZ)
    for _ in range(4):  # up to 16 s
        if await backend.probe(high) is None:
            break
        high *= 2
    else:
        return None
    low = failing  # fails
    while high - low > 16:
        mid = (low + high) // 2
        if await backend.probe(mid) is None:
            high = mid
        else:
            low = mid
    return high
