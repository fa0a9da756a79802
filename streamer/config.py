"""The daemon's configuration: validated at start, errors name the key and the fix.

Every section is a :class:`StrictModel` (unknown keys are errors). Defaults
give the built-in demo: the bundled sample audio replayed in real time
through the default model, published on the WebSocket with the dashboard.
``configs/*.yaml`` show every key with its unit and default.
"""

from __future__ import annotations

import ipaddress
import os
import re
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from dropformer.configio import StrictModel
from streamer.access import TOKEN_ENV, token_from_env
from streamer.sources.base import MAX_CHANNELS, MAX_RATE_HZ, MIN_RATE_HZ

STREAM_ID = r"^[A-Za-z0-9_.:-]{1,128}$"
URL_PATH = r"^/[A-Za-z0-9_./-]*$"


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


APP_NAME = r"^[A-Za-z0-9_.-]{1,64}$"


class RayConfig(StrictModel):
    """The shared inference tier on Ray Serve (worker.backend: ray; docs/scale-out.md).
    Gateways (`emotion-monitor run`) read the connection keys; `emotion-monitor serve-model`
    reads the deployment keys, and worker.max_batch / worker.max_wait_ms for @serve.batch."""

    address: str | None = None
    """Ray cluster: "auto" (the cluster this node belongs to), "ray://host:10001" (Ray Client), or
    "host:6379"; null = serve-model starts a local Ray, a gateway connects as with "auto"
    (RAY_ADDRESS is honoured)."""
    app_name: str = Field("emotion-model", pattern=APP_NAME)
    """Serve application name; every gateway sharing the tier uses the same one."""
    min_replicas: int = Field(1, ge=0, le=10000)
    """serve-model: fewest model replicas (autoscaling lower bound; 0 scales to zero when idle)."""
    max_replicas: int = Field(1, ge=1, le=10000)
    """serve-model: most model replicas (autoscaling upper bound)."""
    target_ongoing_requests: float = Field(8.0, gt=0)
    """serve-model: windows in flight per replica that the autoscaler aims at (about 1-2 batches)."""
    max_ongoing_requests: int = Field(32, ge=1)
    """serve-model: windows one replica accepts at once (at least worker.max_batch, or batches stay small)."""
    num_gpus: float | None = Field(None, ge=0)
    """serve-model: GPUs per replica; null = 1 when the cluster has GPUs, else 0."""
    num_cpus: float = Field(1.0, ge=0)
    """serve-model: CPUs reserved per replica (model.threads is what torch uses)."""
    request_timeout_s: float = Field(30.0, gt=0)
    """Gateway: longest wait for one answer; past it the call counts as a lost connection."""
    retry_min_s: float = Field(0.5, gt=0)
    """Gateway: first back-off after a failed call or a missing application (doubles per failure)."""
    retry_max_s: float = Field(10.0, gt=0)
    """Gateway: longest back-off between retries."""
    connect_timeout_s: float | None = Field(None, gt=0)
    """Gateway: give up at start-up when the application is not up after this long; null = wait."""

    @model_validator(mode="after")
    def _check(self) -> RayConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) exceeds max_replicas ({self.max_replicas}); "
                "set worker.ray.min_replicas <= worker.ray.max_replicas"
            )
        if self.retry_min_s > self.retry_max_s:
            raise ValueError(
                f"retry_min_s ({self.retry_min_s}) exceeds retry_max_s ({self.retry_max_s}); "
                "set worker.ray.retry_min_s <= worker.ray.retry_max_s"
            )
        return self


class WorkerConfig(StrictModel):
    backend: Literal["local", "ray"] = "local"
    """local: the model runs in this process; ray: on a shared Ray Serve tier (worker.ray,
    docs/scale-out.md; needs the ray extra: pip install 'emotion-monitor[ray]')."""
    ray: RayConfig = Field(default_factory=RayConfig)
    """The Ray Serve tier (used with backend: ray and by `emotion-monitor serve-model`)."""
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
    """Analysis window length in seconds (at least what the model needs; checked at start-up)."""
    hop_s: float = Field(1.0, gt=0, le=60)
    """Time between window starts in seconds (one estimate per hop). May exceed window_s:
    the audio between windows is then not analysed (a low duty cycle that saves compute)."""
    first_window: Literal["full", "early"] = "full"
    """full: wait for window_s of audio; early: emit growing windows from min_window_s."""
    min_window_s: float = Field(1.0, gt=0, le=60)
    """Shortest window ever classified (early windows, the tail at end of stream)."""

    @model_validator(mode="after")
    def _check(self) -> WindowConfig:
        if self.min_window_s > self.window_s:
            raise ValueError(
                f"min_window_s ({self.min_window_s}) must not exceed window_s ({self.window_s}); "
                f"set windowing.min_window_s <= {self.window_s}"
            )
        return self


class GateConfig(StrictModel):
    kind: Literal["energy", "silero", "none"] = "energy"
    """energy: level with hysteresis; silero: Silero VAD (silero-vad package); none: every window is speech."""
    threshold_dbfs: float = Field(-45.0, le=0)
    """energy: frame level (dBFS) above which a frame is speech."""
    hysteresis_db: float = Field(6.0, ge=0)
    """energy: a frame after speech stays speech down to threshold - hysteresis."""
    frame_ms: float = Field(30.0, ge=1, le=1000)
    """energy: frame length for the level measure in milliseconds."""
    noise_floor_margin_db: float | None = Field(None, gt=0, le=60)
    """energy: null keeps threshold_dbfs fixed; a number tracks the noise floor (10th percentile
    of frame levels) and raises the threshold to at least floor + this margin (noisy rooms)."""
    noise_floor_rise: float = Field(0.1, gt=0, le=1)
    """energy: how fast the tracked noise floor rises per window (0..1; it falls at once)."""
    vad_threshold: float = Field(0.5, gt=0, lt=1)
    """silero: speech probability threshold per 32 ms chunk."""
    min_speech_share: float = Field(0.2, ge=0, le=1)
    """Share of a window's frames that must be speech for the window to be classified."""


class SmoothingConfig(StrictModel):
    time_constant_s: float = Field(1.0, gt=0)
    """EMA time constant of the smoothed scores, in seconds of audio (1 s: the label follows a change of
    emotion within about 4 s of its start; the streaming protocol in BENCHMARKS.md measured 2 s 3 points worse)."""
    switch_margin: float = Field(0.1, ge=0, le=1)
    """The new top class must beat the current label by this much to switch."""
    min_dwell_s: float = Field(1.0, ge=0)
    """The current label is held at least this long before it may switch."""
    silence: Literal["hold", "decay"] = "hold"
    """During silence: hold the last scores, or decay toward neutral."""
    decay_time_constant_s: float = Field(5.0, gt=0)
    """decay: time constant of the move toward neutral, in seconds."""
    neutral_label: str | None = "neutral"
    """decay: the label silence decays toward (one of the model's labels); null, or a model
    without it, decays toward uniform scores. Checked against the model at start-up."""
    silent_estimates: bool = True
    """Once a stream's first speech window has been classified, also publish an estimate
    (speech=false, scores held or decaying) for each silent window. A stream that has had no
    speech yet publishes no estimates, only its status."""


class UtteranceConfig(StrictModel):
    """Per-utterance results: when the gate closes a speech segment, the model runs once on the
    whole utterance and an ``emotion.utterance`` event follows (besides the window estimates)."""

    enabled: bool = True
    """Cut utterances and publish one emotion.utterance event each."""
    max_s: float = Field(10.0, gt=0, le=60)
    """Longest audio one utterance is classified on, seconds; a longer utterance keeps its last
    max_s seconds and is marked truncated (bounds the audio kept per stream)."""
    min_s: float = Field(0.5, gt=0, le=60)
    """Shorter utterances (coughs, clicks) are not classified, seconds."""
    end_silence_s: float = Field(0.5, gt=0, le=10)
    """Non-speech (by the gate's frames) that ends an utterance, seconds; pauses shorter than
    this stay inside it."""

    @model_validator(mode="after")
    def _check(self) -> UtteranceConfig:
        if self.min_s > self.max_s:
            raise ValueError(
                f"min_s ({self.min_s}) must not exceed max_s ({self.max_s}); "
                f"set utterance.min_s <= {self.max_s} or raise utterance.max_s"
            )
        return self


class QualityConfig(StrictModel):
    enabled: bool = True
    """Speech estimates and utterances carry audio-quality measures (level, clipping, SNR,
    band limit, telephone band; about 1-2 ms per 3 s window)."""


class FileSourceConfig(StrictModel):
    kind: Literal["file"] = "file"
    path: str | None = None
    """WAV/FLAC/OGG file (any rate, any channels); null = the bundled demo audio."""
    realtime: bool = True
    """true: paced like live audio; false: as fast as the worker allows (batch analysis, nothing skipped)."""
    loop: bool = False
    """Start again at the end (the demo loops)."""
    block_ms: float = Field(100.0, ge=1, le=10000)
    """Size of the blocks read from the file, in milliseconds (reads are also bounded in bytes)."""
    channel: int | None = Field(None, ge=0, lt=MAX_CHANNELS)
    """Analyse only this channel (0 = first; one leg of a stereo call recording); null = mix all to mono."""


class MicrophoneSourceConfig(StrictModel):
    kind: Literal["microphone"]
    device: str | int | None = None
    """Input device name (substring) or index; null = the system default. See `emotion-monitor devices`."""
    block_ms: float = Field(20.0, ge=1, le=1000)
    """Capture block length in milliseconds."""
    queue_blocks: int = Field(50, ge=1)
    """Blocks buffered between the audio thread and the loop; when full the oldest is dropped and counted."""
    channels: int = Field(1, ge=1, le=MAX_CHANNELS)
    """Channels captured (mixed down to mono)."""
    sample_rate_hz: float | None = Field(None, ge=MIN_RATE_HZ, le=MAX_RATE_HZ)
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
        if (
            isinstance(data, dict)
            and isinstance(data.get("source"), dict)
            and "kind" not in data["source"]
        ):
            data = {**data, "source": {**data["source"], "kind": "file"}}
        return data


class WebSocketConfig(StrictModel):
    enabled: bool = True
    host: str = "127.0.0.1"
    """Listen address; 127.0.0.1 keeps it private to this machine. Any other address needs
    a token (section access) or access.allow_insecure."""
    port: int = Field(8765, ge=0, le=65535)
    """TCP port (0 = any free port)."""
    path: str = Field("/ws", pattern=URL_PATH)
    """URL path of the event stream."""
    dashboard: bool = True
    """Serve the web dashboard on the same port at /."""
    max_queue: int = Field(100, ge=1, le=100000)
    """Messages buffered per client; a slow client loses the oldest."""
    slow_client_timeout_s: float = Field(10.0, ge=0.1)
    """A client whose queue stays full this long is disconnected."""
    importance: bool = True
    """Estimates carry where in the window the model listened (token importance, dropped
    tokens, waveform envelope; about 1 kB each), which the dashboard draws."""
    max_control_bytes: int = Field(4096, ge=256, le=1024 * 1024)
    """Largest message a client may send on `path` (a subscribe), bytes; checked before
    parsing, larger closes the connection with 1009."""


class MqttTlsConfig(StrictModel):
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False
    """Skip certificate host-name checks (testing only)."""

    @model_validator(mode="after")
    def _files_exist(self) -> MqttTlsConfig:
        for key in ("ca_file", "cert_file", "key_file"):
            value = getattr(self, key)
            if value is not None and not Path(value).is_file():
                raise ValueError(f"{key} {value!r} does not exist; fix the path")
        return self


MQTT_PASSWORD_ENV = "EMOTION_MONITOR_MQTT_PASSWORD"
TOPIC_PREFIX = r"^[^+#\x00/]+(/[^+#\x00/]+)*$"


class MqttConfig(StrictModel):
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    prefix: str = Field("emotion", pattern=TOPIC_PREFIX)
    """Topics are <prefix>/<stream_id>/{estimate,utterance,state,status,alert}; no '+', '#' or empty levels."""
    qos: Literal[0, 1, 2] = 1
    username: str | None = None
    password: str | None = None
    """Prefer the EMOTION_MONITOR_MQTT_PASSWORD environment variable to a password in a file."""
    tls: MqttTlsConfig | None = None
    client_id: str | None = None
    keepalive_s: int = Field(30, ge=1, le=65535)
    max_queue: int = Field(1000, ge=1, le=1_000_000)
    """Estimates and alerts buffered while disconnected; beyond it the oldest estimate is
    dropped (alerts only when no estimate is left) and counted. Retained topics (state, status)
    are never dropped: the latest per topic is kept."""
    reconnect_min_s: float = Field(0.5, ge=0.01)
    reconnect_max_s: float = Field(30.0, ge=0.01, le=3600)
    importance: bool = False
    """Estimates carry token importance (about 1 kB more each); off to keep messages small."""
    home_assistant: bool = False
    """Announce each stream to Home Assistant (MQTT discovery, docs/home-assistant.md)."""
    discovery_prefix: str = Field("homeassistant", pattern=r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$")
    """Home Assistant's discovery prefix (its MQTT option of that name)."""

    @model_validator(mode="after")
    def _check(self) -> MqttConfig:
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError(
                f"reconnect_min_s ({self.reconnect_min_s}) exceeds reconnect_max_s "
                f"({self.reconnect_max_s}); set reconnect_min_s <= reconnect_max_s"
            )
        return self

    def password_value(self) -> str | None:
        """The password from the config, else from EMOTION_MONITOR_MQTT_PASSWORD."""
        return self.password or os.environ.get(MQTT_PASSWORD_ENV) or None


class JsonlConfig(StrictModel):
    enabled: bool = False
    path: str = "emotion-events.jsonl"
    """File the events are appended to, one JSON object per line."""
    rotate_mb: float | None = Field(None, ge=0.01)
    """Rotate the file past this size in megabytes (to <path>.1, older ones shift up); null = never."""
    rotate_keep: int | None = Field(5, ge=1, le=100000)
    """Rotated files kept (<path>.1 ... <path>.N); older ones are deleted, each deletion logged.
    null = keep every rotated file."""
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


WEBHOOK_TOKEN_ENV = "EMOTION_MONITOR_WEBHOOK_TOKEN"
TRACK_NAME = r"^[A-Za-z0-9_-]{1,32}$"
MIN_TOKEN_CHARS = 16
MAX_TOKEN_FILE_BYTES = 4096


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (or ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class AccessConfig(StrictModel):
    """Who may connect to the daemon's port (events on /ws, /healthz, /ingest, /twilio). SECURITY.md."""

    token: str | None = Field(None, min_length=MIN_TOKEN_CHARS)
    """Bearer token every client must present (Authorization header, the subprotocol
    'bearer.<token>', or ?token= for browsers); prefer the EMOTION_MONITOR_TOKEN environment
    variable or token_file. Required when publish.websocket.host is not loopback."""
    token_file: str | None = None
    """A file holding the token (e.g. a container secret); surrounding white space is ignored."""
    require_token: bool = False
    """Refuse to start without a token even on loopback (behind a reverse proxy, set true)."""
    allow_insecure: bool = False
    """Start on a non-loopback address without a token (a loud warning instead of a refusal):
    anyone who can reach the port reads the estimates and may feed audio."""
    allowed_origins: list[str] = Field(default_factory=list)
    """Web pages (scheme://host[:port]) from other origins whose browsers may connect; the
    dashboard served by the daemon itself (same origin) always may. Others get 403."""
    allowed_hosts: list[str] = Field(default_factory=list)
    """Host names the daemon answers to besides IP addresses, localhost and publish.websocket.host,
    e.g. monitor.example.com or *.example.com ('*' turns the check off). Others get 403
    (this defeats DNS rebinding)."""
    max_connections: int = Field(512, ge=1, le=100000)
    """Open WebSocket connections on the port (all paths); more are refused with HTTP 503."""
    max_connections_per_address: int = Field(64, ge=1, le=100000)
    """Open WebSocket connections from one client address; more are refused with HTTP 503.
    Behind a reverse proxy every client has the proxy's address: raise it."""

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, origins: list[str]) -> list[str]:
        for origin in origins:
            parts = urlsplit(origin)
            if (
                parts.scheme not in ("http", "https")
                or not parts.netloc
                or parts.path
                or parts.query
            ):
                raise ValueError(
                    f"origin {origin!r} must be scheme://host[:port], e.g. https://monitor.example.com"
                )
        return [o.lower() for o in origins]

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, hosts: list[str]) -> list[str]:
        for host in hosts:
            if host != "*" and not re.fullmatch(r"(\*\.)?[A-Za-z0-9_.-]+", host):
                raise ValueError(
                    f"host {host!r} must be a host name without port, *.domain, or '*'"
                )
        return [h.lower() for h in hosts]

    @model_validator(mode="after")
    def _check_token_source(self) -> AccessConfig:
        if self.token is not None and self.token_file is not None:
            raise ValueError("set access.token or access.token_file, not both")
        if self.token_file is not None:
            self.read_token_file()
        return self

    def read_token_file(self) -> str:
        assert self.token_file is not None
        path = Path(self.token_file)
        try:
            if not path.is_file():
                raise OSError("not a file")
            with path.open("rb") as f:
                raw = f.read(MAX_TOKEN_FILE_BYTES + 1)
            if len(raw) > MAX_TOKEN_FILE_BYTES:
                raise OSError(f"larger than {MAX_TOKEN_FILE_BYTES} bytes")
            token = raw.decode("utf-8").strip()
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ValueError(
                f"token_file {self.token_file!r} cannot be read ({exc}); fix the path"
            ) from None
        if len(token) < MIN_TOKEN_CHARS:
            raise ValueError(
                f"the token in token_file {self.token_file!r} must be at least {MIN_TOKEN_CHARS} characters"
            )
        return token

    def bearer_token(self) -> str | None:
        """The token: access.token, else access.token_file, else EMOTION_MONITOR_TOKEN; None = none."""
        if self.token is not None:
            return self.token
        if self.token_file is not None:
            return self.read_token_file()
        return token_from_env()


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
            raise ValueError(
                "inbound_name and outbound_name must differ, or the two voices would mix"
            )
        return self


class IngestConfig(StrictModel):
    enabled: bool = True
    """Accept audio over the network on `path` (docs/ingest.md); loopback only unless a token is set.
    Served on publish.websocket's port: off when that server is disabled."""
    path: str = Field("/ingest", pattern=r"^/[A-Za-z0-9_./-]*$")
    """URL path of the ingest WebSocket (on publish.websocket's port)."""
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

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            moved = sorted(k for k in ("token", "require_token") if k in data)
            if moved:
                raise ValueError(
                    f"ingest.{moved[0]} is now access.{moved[0]}: one token guards /ws, /ingest "
                    f"and /twilio (environment variable {TOKEN_ENV}); move it there"
                )
        return data

    @property
    def any_enabled(self) -> bool:
        return self.enabled or self.twilio.enabled


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
        for low, high, what in (
            (self.arousal_min, self.arousal_max, "arousal"),
            (self.valence_min, self.valence_max, "valence"),
        ):
            if low is not None and high is not None and low > high:
                raise ValueError(
                    f"rule {self.name!r}: {what}_min ({low}) exceeds {what}_max ({high})"
                )
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


CHANNEL_NAME = r"^[A-Za-z0-9_-]{1,32}$"


class AnalyzeConfig(StrictModel):
    """``emotion-monitor analyze``: recordings through the daemon, as fast as it goes (docs/analyze.md)."""

    channels: Literal["mix", "separate"] = "mix"
    """mix: average the channels to one stream; separate: one stream per channel (a stereo call
    recording: each leg on its own, as the live Twilio legs are)."""
    channel_names: list[Annotated[str, Field(pattern=CHANNEL_NAME)]] | None = None
    """Names of the channels with channels=separate, e.g. [agent, customer] (streams <file>.<name>);
    null = ch0, ch1, ... A file with another number of channels is refused. A channel named like
    ingest.twilio.outbound_name (agent) is analysed only with ingest.analyse_agent=true."""
    out_dir: str = "analysis"
    """Folder the results are written to (one sub-folder per recording)."""
    report: bool = False
    """Also draw one PNG per recording and channel, and an index.html (needs matplotlib)."""
    workers: int = Field(1, ge=1, le=64)
    """Recordings analysed at once, each worker process with its own model."""

    @field_validator("channel_names")
    @classmethod
    def _unique_names(cls, names: list[str] | None) -> list[str] | None:
        if names is not None:
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes or not names:
                raise ValueError(
                    f"channel names must be unique and at least one; got {names}: "
                    "e.g. analyze.channel_names=[agent,customer]"
                )
        return names


class ApiConfig(StrictModel):
    """``POST /v1/analyze`` on publish.websocket's port: analyse an uploaded recording (docs/analyze.md)."""

    enabled: bool = True
    """Serve the endpoint (same token and Host/Origin checks as /ws); its own model is loaded
    on the first request and kept."""
    max_upload_bytes: int = Field(50_000_000, ge=1024, le=2**31)
    """Largest upload (the request body), bytes; larger is refused with 413 before it is read."""
    max_concurrent: int = Field(1, ge=1, le=64)
    """Analyses running at once; more are refused with 429 and Retry-After."""
    timeout_s: float = Field(300.0, gt=0, le=86400)
    """An analysis taking longer is stopped and answered with 503."""
    upload_timeout_s: float = Field(60.0, gt=0, le=3600)
    """The whole request (headers and body) must arrive within this many seconds (else 408)."""
    keep_dir: str | None = None
    """Keep each uploaded recording and its results in a new folder under this one; null = keep
    nothing on disk after the answer."""


class DaemonConfig(StrictModel):
    model: ModelConfig = Field(default_factory=ModelConfig)
    worker: WorkerConfig = Field(default_factory=WorkerConfig)
    windowing: WindowConfig = Field(default_factory=WindowConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    smoothing: SmoothingConfig = Field(default_factory=SmoothingConfig)
    utterance: UtteranceConfig = Field(default_factory=UtteranceConfig)
    """Per-utterance results (emotion.utterance events)."""
    quality: QualityConfig = Field(default_factory=QualityConfig)
    """Audio-quality measures on estimates and utterances."""
    streams: list[StreamConfig] = Field(
        default_factory=lambda: [StreamConfig(id="demo", source=FileSourceConfig(loop=True))]
    )
    """The audio streams to monitor (default: the bundled demo audio, looping)."""
    publish: PublishConfig = Field(default_factory=PublishConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    """Audio over the network: /ingest, Twilio Media Streams (docs/ingest.md, docs/twilio.md)."""
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    """Alert rules and the optional webhook (docs/alerts.md)."""
    access: AccessConfig = Field(default_factory=AccessConfig)
    """Who may connect: token, allowed origins and host names, connection limits (SECURITY.md)."""
    analyze: AnalyzeConfig = Field(default_factory=AnalyzeConfig)
    """`emotion-monitor analyze`: channels, output folder, report, workers (docs/analyze.md)."""
    api: ApiConfig = Field(default_factory=ApiConfig)
    """POST /v1/analyze: upload limits and concurrency (docs/analyze.md)."""
    status_interval_s: float | None = Field(10.0, ge=0.1, le=86400)
    """Publish each stream's status (with fresh counters) at least this often, and log the
    running total of lost messages when it grew; null = statuses only on changes."""
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
            raise ValueError(
                "at least one stream is needed (streams), or enable ingest or ingest.twilio"
            )
        if not ws.enabled:
            return self  # nothing listens
        paths = [ws.path, "/healthz"] + (["/v1/analyze"] if self.api.enabled else [])
        if self.network_enabled:
            paths += ([ing.path] if ing.enabled else []) + (
                [ing.twilio.path] if ing.twilio.enabled else []
            )
        if len(set(paths)) != len(paths):
            raise ValueError(
                f"ingest.path, ingest.twilio.path, publish.websocket.path, /healthz and /v1/analyze must differ; got {paths}"
            )
        token = self.access.bearer_token()
        if token is None and self.access.require_token:
            raise ValueError(
                f"access.require_token is set but there is no token: set the {TOKEN_ENV} environment variable "
                "(e.g. to the output of `openssl rand -hex 24`), access.token_file or access.token"
            )
        if token is None and not is_loopback(ws.host) and not self.access.allow_insecure:
            raise ValueError(
                f"publish.websocket.host={ws.host} is not loopback: without a token anyone who can reach "
                f"port {ws.port} reads the estimates (and may send audio). Set the {TOKEN_ENV} environment "
                "variable (e.g. to the output of `openssl rand -hex 24`), access.token_file or access.token; "
                "or set access.allow_insecure=true to accept that"
            )
        if token is not None and len(token) < MIN_TOKEN_CHARS:
            raise ValueError(
                f"the token from {TOKEN_ENV} must be at least {MIN_TOKEN_CHARS} characters"
            )
        return self

    @property
    def insecure(self) -> bool:
        """Listening beyond loopback without a token (allowed only by access.allow_insecure)."""
        ws = self.publish.websocket
        return ws.enabled and not is_loopback(ws.host) and self.access.bearer_token() is None


def config_summary(cfg: DaemonConfig) -> dict[str, Any]:
    return cfg.model_dump(
        mode="json",
        exclude={
            "publish": {"mqtt": {"password"}},
            "access": {"token"},
            "alerts": {"webhook": {"token"}},
        },
    )
