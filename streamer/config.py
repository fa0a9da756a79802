"""The daemon's configuration: validated at start, errors name the key and the fix.

Every section is a :class:`StrictModel` (unknown keys are errors). Defaults
give the built-in demo: the bundled sample audio replayed in real time
through the default model, published on the WebSocket with the dashboard.
``configs/*.yaml`` show every key with its unit and default.
"""

from __future__ import annotations

import ipaddress
import os
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from dropformer.configio import StrictModel

STREAM_ID = r"^[A-Za-z0-9_.:-]{1,128}$"


def demo_audio_path() -> Path:
    """The bundled demo stream (EmoDB utterances of different emotions)."""
    return Path(str(resources.files("streamer"))) / "assets" / "demo_emodb.wav"


def dashboard_dir() -> Path:
    return Path(str(resources.files("clients"))) / "dashboard"


class ModelConfig(StrictModel):
    checkpoint: str | None = None
    """Checkpoint folder; null = the bundled EmoDB log-mel model (random-init fallback, loudly)."""
    frontend_model: str | None = None
    """Override where a WavLM front end loads from (hub id or local folder)."""
    device: str = "auto"
    """auto | cpu | cuda | cuda:N."""
    threads: int = Field(1, ge=1, le=256)
    """torch intra-op threads on CPU; 1 is steadiest on a shared machine."""
    frontend: dict[str, Any] = Field(default_factory=dict)
    """Front-end settings over the checkpoint's (FrontendConfig fields), e.g. {dtype: bfloat16, conv_dtype: float32}
    for WavLM on CPUs with AMX/AVX512-BF16 or on GPUs (BENCHMARKS.md); {} = the checkpoint's own."""
    warm_up: bool = True
    """Run one window through the model at start-up so the first live window does not pay one-time costs."""


class WorkerConfig(StrictModel):
    max_batch: int = Field(8, ge=1, le=1024)
    """Most windows classified together (across streams)."""
    max_wait_ms: float = Field(10.0, ge=0, le=1000)
    """How long the worker waits for more windows after the first of a batch."""
    queue_size: int = Field(32, ge=1, le=100000)
    """Most windows waiting; when full the oldest is skipped (counted as stale)."""
    stale_after_s: float = Field(2.0, gt=0)
    """A real-time window older than this when its batch forms is skipped and counted."""


class WindowConfig(StrictModel):
    window_s: float = Field(3.0, gt=0, le=60)
    """Analysis window length in seconds."""
    hop_s: float = Field(1.0, gt=0, le=60)
    """Time between window starts in seconds (one estimate per hop)."""
    first_window: Literal["full", "early"] = "full"
    """full: wait for window_s of audio; early: emit growing windows from min_window_s."""
    min_window_s: float = Field(1.0, gt=0, le=60)
    """Shortest window ever classified (early windows, the tail at end of stream)."""

    @model_validator(mode="after")
    def _check(self) -> WindowConfig:
        if self.hop_s > self.window_s:
            raise ValueError(f"hop_s ({self.hop_s}) must not exceed window_s ({self.window_s}); audio between windows would be ignored")
        if self.min_window_s > self.window_s:
            raise ValueError(f"min_window_s ({self.min_window_s}) must not exceed window_s ({self.window_s})")
        return self


class GateConfig(StrictModel):
    kind: Literal["energy", "silero", "none"] = "energy"
    """energy: level with hysteresis; silero: Silero VAD (silero-vad package); none: every window is speech."""
    threshold_dbfs: float = Field(-45.0, le=0)
    """energy: frame level (dBFS) above which a frame is speech."""
    hysteresis_db: float = Field(6.0, ge=0)
    """energy: a frame after speech stays speech down to threshold - hysteresis."""
    frame_ms: float = Field(30.0, gt=0)
    """energy: frame length for the level measure in milliseconds."""
    vad_threshold: float = Field(0.5, gt=0, lt=1)
    """silero: speech probability threshold per 32 ms chunk."""
    min_speech_share: float = Field(0.2, ge=0, le=1)
    """Share of a window's frames that must be speech for the window to be classified."""


class SmoothingConfig(StrictModel):
    time_constant_s: float = Field(2.0, gt=0)
    """EMA time constant of the smoothed scores, in seconds of audio."""
    switch_margin: float = Field(0.1, ge=0, le=1)
    """The new top class must beat the current label by this much to switch."""
    min_dwell_s: float = Field(1.0, ge=0)
    """The current label is held at least this long before it may switch."""
    silence: Literal["hold", "decay"] = "hold"
    """During silence: hold the last scores, or decay toward neutral."""
    decay_time_constant_s: float = Field(5.0, gt=0)
    """decay: time constant of the move toward neutral, in seconds."""
    silent_estimates: bool = True
    """Also publish an estimate (speech=false) for silent windows."""


class FileSourceConfig(StrictModel):
    kind: Literal["file"] = "file"
    path: str | None = None
    """WAV/FLAC/OGG file (any rate, any channels); null = the bundled demo audio."""
    realtime: bool = True
    """true: paced like live audio; false: as fast as the worker allows (batch analysis, nothing skipped)."""
    loop: bool = False
    """Start again at the end (the demo loops)."""
    block_ms: float = Field(100.0, gt=0, le=10000)
    """Size of the blocks read from the file, in milliseconds."""


class MicrophoneSourceConfig(StrictModel):
    kind: Literal["microphone"]
    device: str | int | None = None
    """Input device name (substring) or index; null = the system default. See `emotion-monitor devices`."""
    block_ms: float = Field(20.0, gt=0, le=1000)
    """Capture block length in milliseconds."""
    queue_blocks: int = Field(50, ge=1)
    """Blocks buffered between the audio thread and the loop; when full the oldest is dropped and counted."""
    channels: int = Field(1, ge=1, le=64)
    """Channels captured (mixed down to mono)."""
    sample_rate_hz: float | None = Field(None, gt=0)
    """Capture rate; null = the device's native rate (resampled to 16 kHz either way)."""


SourceConfig = Annotated[FileSourceConfig | MicrophoneSourceConfig, Field(discriminator="kind")]


class StreamConfig(StrictModel):
    id: str = Field(pattern=STREAM_ID)
    """Stream id: letters, digits, _ . : - (one MQTT topic level)."""
    source: SourceConfig = Field(default_factory=FileSourceConfig)
    restart_s: float | None = Field(5.0, ge=0)
    """After a microphone failure, try again after this many seconds (doubling up to 60 s); null = give up."""

    @model_validator(mode="before")
    @classmethod
    def _default_source_kind(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("source"), dict) and "kind" not in data["source"]:
            data = {**data, "source": {**data["source"], "kind": "file"}}
        return data


class WebSocketConfig(StrictModel):
    enabled: bool = True
    host: str = "127.0.0.1"
    """Listen address; 127.0.0.1 keeps it private to this machine."""
    port: int = Field(8765, ge=0, le=65535)
    """TCP port (0 = any free port)."""
    path: str = "/ws"
    """URL path of the event stream."""
    dashboard: bool = True
    """Serve the web dashboard on the same port at /."""
    max_queue: int = Field(100, ge=1)
    """Messages buffered per client; a slow client loses the oldest."""
    slow_client_timeout_s: float = Field(10.0, gt=0)
    """A client whose queue stays full this long is disconnected."""
    importance: bool = True
    """Estimates carry where in the window the model listened (token importance, dropped
    tokens, waveform envelope; about 1 kB each), which the dashboard draws."""


class MqttTlsConfig(StrictModel):
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False
    """Skip certificate host-name checks (testing only)."""


class MqttConfig(StrictModel):
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    prefix: str = "emotion"
    """Topics are <prefix>/<stream_id>/{estimate,state,status,alert}."""
    qos: Literal[0, 1, 2] = 1
    username: str | None = None
    password: str | None = None
    """Prefer the EMOTION_MONITOR_MQTT_PASSWORD environment variable to a password in a file."""
    tls: MqttTlsConfig | None = None
    client_id: str | None = None
    keepalive_s: int = Field(30, ge=1)
    max_queue: int = Field(1000, ge=1)
    """Events buffered while disconnected; the oldest are dropped (counted) beyond this."""
    reconnect_min_s: float = Field(0.5, gt=0)
    reconnect_max_s: float = Field(30.0, gt=0)
    importance: bool = False
    """Estimates carry token importance (about 1 kB more each); off to keep messages small."""
    home_assistant: bool = False
    """Announce each stream to Home Assistant (MQTT discovery, docs/home-assistant.md)."""
    discovery_prefix: str = Field("homeassistant", pattern=r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$")
    """Home Assistant's discovery prefix (its MQTT option of that name)."""


class JsonlConfig(StrictModel):
    enabled: bool = False
    path: str = "emotion-events.jsonl"
    """File the events are appended to, one JSON object per line."""
    rotate_mb: float | None = Field(None, gt=0)
    """Rotate the file past this size in megabytes; null = never."""
    importance: bool = False
    """Estimates carry token importance (about 1 kB more each)."""


class PublishConfig(StrictModel):
    websocket: WebSocketConfig = Field(default_factory=WebSocketConfig)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    jsonl: JsonlConfig = Field(default_factory=JsonlConfig)

    @property
    def importance(self) -> bool:
        """Whether an enabled publisher wants token importance (else it is not computed)."""
        return any(p.enabled and p.importance for p in (self.websocket, self.mqtt, self.jsonl))


INGEST_TOKEN_ENV = "EMOTION_MONITOR_INGEST_TOKEN"
WEBHOOK_TOKEN_ENV = "EMOTION_MONITOR_WEBHOOK_TOKEN"
TRACK_NAME = r"^[A-Za-z0-9_-]{1,32}$"


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (or ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class TwilioConfig(StrictModel):
    enabled: bool = False
    """Serve Twilio Media Streams on `path` (docs/twilio.md)."""
    path: str = Field("/twilio", pattern=r"^/[A-Za-z0-9_./-]*$")
    """URL path Twilio's <Stream url> points at."""
    inbound_name: str = Field("caller", pattern=TRACK_NAME)
    """Stream id suffix of the inbound track (the caller / customer): <callSid>.caller."""
    outbound_name: str = Field("agent", pattern=TRACK_NAME)
    """Stream id suffix of the outbound track (the agent / voice bot): <callSid>.agent."""

    @model_validator(mode="after")
    def _check(self) -> TwilioConfig:
        if self.inbound_name == self.outbound_name:
            raise ValueError("inbound_name and outbound_name must differ, or the two voices would mix")
        return self


class IngestConfig(StrictModel):
    enabled: bool = True
    """Accept audio over the network on `path` (docs/ingest.md); loopback only unless a token is set.
    Served on publish.websocket's port: off when that server is disabled."""
    path: str = Field("/ingest", pattern=r"^/[A-Za-z0-9_./-]*$")
    """URL path of the ingest WebSocket (on publish.websocket's port)."""
    token: str | None = Field(None, min_length=16)
    """Bearer token clients must send (Authorization header or ?token=); prefer the
    EMOTION_MONITOR_INGEST_TOKEN environment variable. Required when the port is not loopback."""
    require_token: bool = False
    """Refuse to start without a token even on loopback (behind a reverse proxy, set true)."""
    max_sessions: int = Field(100, ge=1, le=100000)
    """Concurrent network sessions (ingest and Twilio); more are closed with 1013."""
    max_frame_bytes: int = Field(65536, ge=64, le=16 * 1024 * 1024)
    """Largest binary audio frame, bytes; larger closes the session with 1009."""
    max_control_bytes: int = Field(4096, ge=256, le=1024 * 1024)
    """Largest JSON message (ingest control or Twilio message), bytes, checked before parsing."""
    max_bytes_per_s: int = Field(400_000, ge=8000)
    """Largest declared data rate of one session (rate x channels x sample bytes), bytes/s."""
    max_speed: float = Field(1.5, ge=1.0, le=1000.0)
    """Audio may arrive at most this many times faster than real time (after the burst)."""
    burst_s: float = Field(5.0, gt=0, le=3600)
    """Seconds of audio a client may send ahead of real time (catching up after a stall)."""
    max_errors: int = Field(100, ge=1)
    """Non-fatal errors (malformed messages) a session may make before it is closed."""
    start_timeout_s: float = Field(10.0, gt=0)
    """A session that has not started (or authenticated) within this many seconds is closed."""
    queue_s: float = Field(10.0, gt=0, le=600)
    """Audio buffered per stream between the socket and analysis, seconds; beyond it the
    oldest is dropped and counted (dropped_frames)."""
    analyse_agent: bool = False
    """Analyse agents' voices (Twilio outbound track, ingest role 'agent'). Emotion
    recognition of workers is prohibited in the EU (AI Act Art. 5(1)(f)): off by default."""
    twilio: TwilioConfig = Field(default_factory=TwilioConfig)

    @property
    def any_enabled(self) -> bool:
        return self.enabled or self.twilio.enabled

    def bearer_token(self) -> str | None:
        """The token from the config, else from EMOTION_MONITOR_INGEST_TOKEN; None = no auth."""
        return self.token or os.environ.get(INGEST_TOKEN_ENV) or None


class AlertRuleConfig(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    """The alert's kind, e.g. sustained_anger (unique among rules)."""
    streams: str = "*"
    """Glob on the stream id, e.g. '*.caller' (default: every stream)."""
    role: str | None = None
    """Only streams with this role (ingest metadata.role, or the Twilio track name); null = any."""
    label: str | None = None
    """The smoothed label must be this (one of the model's labels); null = any label."""
    min_confidence: float = Field(0.0, ge=0, le=1)
    """The smoothed score of the label must be at least this (default 0)."""
    arousal_min: float | None = Field(None, ge=-1, le=1)
    arousal_max: float | None = Field(None, ge=-1, le=1)
    valence_min: float | None = Field(None, ge=-1, le=1)
    valence_max: float | None = Field(None, ge=-1, le=1)
    min_duration_s: float = Field(5.0, ge=0)
    """The condition must hold this many seconds of audio before the alert fires."""
    cooldown_s: float = Field(60.0, ge=0)
    """At least this many seconds of audio between two alerts of this rule on one stream."""
    max_gap_s: float = Field(5.0, gt=0)
    """A pause longer than this between matching speech estimates ends the episode."""
    severity: Literal["info", "warning", "critical"] = "warning"
    message: str | None = None
    """Alert text; {stream_id} {label} {confidence} {duration_s} are filled in; null = generated."""

    @model_validator(mode="after")
    def _check(self) -> AlertRuleConfig:
        bounds = (self.arousal_min, self.arousal_max, self.valence_min, self.valence_max)
        if self.label is None and self.min_confidence == 0 and all(b is None for b in bounds):
            raise ValueError(
                f"rule {self.name!r} has no condition; set label, min_confidence or an arousal/valence bound"
            )
        for low, high, what in ((self.arousal_min, self.arousal_max, "arousal"), (self.valence_min, self.valence_max, "valence")):
            if low is not None and high is not None and low > high:
                raise ValueError(f"rule {self.name!r}: {what}_min ({low}) exceeds {what}_max ({high})")
        return self


class WebhookConfig(StrictModel):
    url: str | None = Field(None, pattern=r"^https?://")
    """POST every alert (JSON) to this URL; null = no webhook."""
    timeout_s: float = Field(5.0, gt=0, le=120)
    """Time limit of one POST, seconds."""
    max_retries: int = Field(3, ge=0, le=20)
    """Retries after a failed POST (network error, 408, 429 or 5xx), with doubling back-off."""
    retry_backoff_s: float = Field(1.0, gt=0)
    """First back-off between retries, seconds (doubles each retry)."""
    max_queue: int = Field(100, ge=1)
    """Alerts waiting to be posted; when full the oldest is dropped and counted."""
    token: str | None = None
    """Sent as 'Authorization: Bearer ...'; prefer EMOTION_MONITOR_WEBHOOK_TOKEN."""

    def bearer_token(self) -> str | None:
        return self.token or os.environ.get(WEBHOOK_TOKEN_ENV) or None


class AlertsConfig(StrictModel):
    rules: list[AlertRuleConfig] = Field(default_factory=list)
    """Alert rules, evaluated on every smoothed estimate (docs/alerts.md)."""
    webhook: WebhookConfig = Field(default_factory=WebhookConfig)

    @field_validator("rules")
    @classmethod
    def _unique_names(cls, rules: list[AlertRuleConfig]) -> list[AlertRuleConfig]:
        names = [r.name for r in rules]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"alert rule names must be unique; repeated: {dupes}")
        return rules


class DaemonConfig(StrictModel):
    model: ModelConfig = Field(default_factory=ModelConfig)
    worker: WorkerConfig = Field(default_factory=WorkerConfig)
    windowing: WindowConfig = Field(default_factory=WindowConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    smoothing: SmoothingConfig = Field(default_factory=SmoothingConfig)
    streams: list[StreamConfig] = Field(default_factory=lambda: [StreamConfig(id="demo", source=FileSourceConfig(loop=True))])
    """The audio streams to monitor (default: the bundled demo audio, looping)."""
    publish: PublishConfig = Field(default_factory=PublishConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    """Audio over the network: /ingest, Twilio Media Streams (docs/ingest.md, docs/twilio.md)."""
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    """Alert rules and the optional webhook (docs/alerts.md)."""
    status_interval_s: float | None = Field(10.0, gt=0)
    """Publish each stream's status (with fresh counters) at least this often; null = only on changes."""
    duration_s: float | None = Field(None, gt=0)
    """Stop after this many seconds (null = run until SIGINT/SIGTERM or every stream ended)."""

    @field_validator("streams")
    @classmethod
    def _unique_ids(cls, streams: list[StreamConfig]) -> list[StreamConfig]:
        ids = [s.id for s in streams]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"stream ids must be unique; repeated: {dupes}")
        return streams

    @property
    def network_enabled(self) -> bool:
        """Whether network audio is served (it needs the WebSocket server's port)."""
        return self.publish.websocket.enabled and self.ingest.any_enabled

    @model_validator(mode="after")
    def _check_network(self) -> DaemonConfig:
        ing, ws = self.ingest, self.publish.websocket
        if not ws.enabled and ing.twilio.enabled:
            raise ValueError(
                "ingest.twilio serves on the WebSocket port: set publish.websocket.enabled=true or disable ingest.twilio"
            )
        if not self.streams and not self.network_enabled:
            raise ValueError("at least one stream is needed (streams), or enable ingest or ingest.twilio")
        if not self.network_enabled:
            return self  # (the default ingest.enabled has no port to serve on: nothing to check)
        paths = [ws.path, "/healthz"] + ([ing.path] if ing.enabled else []) + ([ing.twilio.path] if ing.twilio.enabled else [])
        if len(set(paths)) != len(paths):
            raise ValueError(f"ingest.path, ingest.twilio.path, publish.websocket.path and /healthz must differ; got {paths}")
        token = ing.bearer_token()
        if token is None and (ing.require_token or not is_loopback(ws.host)):
            why = "ingest.require_token is set" if ing.require_token else f"publish.websocket.host={ws.host} is not loopback"
            raise ValueError(
                f"ingest needs a token: {why}. Set the {INGEST_TOKEN_ENV} environment variable "
                "(e.g. to the output of `openssl rand -hex 24`) or ingest.token, or disable ingest"
            )
        if token is not None and len(token) < 16:
            raise ValueError(f"the ingest token from {INGEST_TOKEN_ENV} must be at least 16 characters")
        return self


def config_summary(cfg: DaemonConfig) -> dict[str, Any]:
    return cfg.model_dump(
        mode="json",
        exclude={"publish": {"mqtt": {"password"}}, "ingest": {"token"}, "alerts": {"webhook": {"token"}}},
    )
