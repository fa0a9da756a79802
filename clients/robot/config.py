"""The robot client's configuration (``emotion-monitor robot --config configs/robot.yaml``).

Every section is a :class:`StrictModel`: unknown keys are errors naming the key
and the fix; ``configs/robot.yaml`` documents every key with its unit and
default. Times in the rules are seconds of *audio* (the estimates' own
clock), so ``--dry-run`` on a recording fires exactly as the live stream did.
"""

from __future__ import annotations

import os
import string
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationInfo, field_validator, model_validator

from dropformer.configio import StrictModel

NAME = r"^[A-Za-z0-9_.:-]{1,64}$"
MQTT_PASSWORD_ENV = "EMOTION_MONITOR_MQTT_PASSWORD"
WEBHOOK_TOKEN_ENV = "EMOTION_MONITOR_WEBHOOK_TOKEN"
#: What templates (mqtt topic and payload, command arguments) may use, with sample values.
TEMPLATE_FIELDS: dict[str, Any] = {
    "rule": "calm_down", "stream_id": "head_mic", "seq": 42, "audio_ms": 12500, "duration_ms": 2000,
    "label": "angry", "confidence": 0.71, "arousal": 0.62, "valence": -0.48,
    "time": "2025-01-01T12:00:00.000Z", "json": "{}",
}  # fmt: skip


def check_template(text: str) -> str:
    """``text`` with ``{field}`` placeholders; raises ValueError naming an unknown field."""
    try:
        for _, name, _, _ in string.Formatter().parse(text):
            if name is not None and name.split(".")[0].split("[")[0] not in TEMPLATE_FIELDS:
                raise ValueError(f"unknown placeholder {{{name}}}; use {sorted(TEMPLATE_FIELDS)}")
        text.format(**TEMPLATE_FIELDS)
    except (IndexError, KeyError, ValueError) as exc:
        raise ValueError(f"{text!r} is not a valid template: {exc}") from None
    return text


class InputConfig(StrictModel):
    kind: Literal["mqtt", "websocket"] = "mqtt"
    """Where the estimates come from: the broker (section mqtt) or the daemon's WebSocket (url)."""
    url: str = "ws://127.0.0.1:8765/ws"
    """websocket: the daemon's event endpoint."""
    token: str | None = None
    """websocket: the daemon's token; prefer the EMOTION_MONITOR_TOKEN environment variable."""
    open_timeout_s: float = Field(5.0, gt=0)
    """websocket: how long one connection attempt may take, seconds."""
    reconnect_min_s: float = Field(0.5, gt=0)
    """First wait before reconnecting after the broker or daemon went away, seconds (doubles, with jitter)."""
    reconnect_max_s: float = Field(30.0, gt=0)
    """Longest wait between reconnection attempts, seconds."""
    max_queue: int = Field(1000, ge=1)
    """Events waiting for the rule loop; beyond, the oldest is dropped and counted."""

    @field_validator("url")
    @classmethod
    def _ws_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ValueError("must be a WebSocket URL like ws://127.0.0.1:8765/ws")
        return value

    @model_validator(mode="after")
    def _check(self) -> InputConfig:
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError(
                f"reconnect_min_s ({self.reconnect_min_s}) exceeds reconnect_max_s ({self.reconnect_max_s})"
            )
        return self


class MqttTls(StrictModel):
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False
    """Skip certificate host-name checks (testing only)."""


class MqttConnection(StrictModel):
    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    prefix: str = Field("emotion", pattern=r"^[^+#\x00]+$")
    """The daemon's publish.mqtt.prefix (topics <prefix>/<stream_id>/{estimate,state,status})."""
    username: str | None = None
    password: str | None = None
    """Prefer the EMOTION_MONITOR_MQTT_PASSWORD environment variable."""
    tls: MqttTls | None = None
    client_id: str | None = None
    keepalive_s: int = Field(30, ge=1)
    max_queue: int = Field(100, ge=1)
    """Commands (mqtt actions) buffered while the broker is away; beyond, the oldest is dropped and counted."""

    def secret(self) -> str | None:
        return self.password or os.environ.get(MQTT_PASSWORD_ENV) or None


class RosConnection(StrictModel):
    host: str = "127.0.0.1"
    """rosbridge_server's host (ros2 launch rosbridge_server rosbridge_websocket_launch.xml)."""
    port: int = Field(9090, ge=1, le=65535)
    secure: bool = False
    """wss:// instead of ws://."""
    reconnect_min_s: float = Field(1.0, gt=0)
    reconnect_max_s: float = Field(30.0, gt=0)


class LogAction(StrictModel):
    kind: Literal["log"]
    level: Literal["info", "warning"] = "info"


class MqttAction(StrictModel):
    kind: Literal["mqtt"]
    topic: str = Field(min_length=1)
    """The robot's command topic; a template, e.g. robot/{stream_id}/cmd."""
    qos: Literal[0, 1, 2] = 1
    retain: bool = False
    payload: str | None = None
    """A template, e.g. calm_down or {{"say": "{label}"}}; null = the action as JSON."""

    @field_validator("topic")
    @classmethod
    def _topic(cls, value: str) -> str:
        check_template(value)
        if any(c in value for c in "+#\x00"):
            raise ValueError(f"{value!r}: a topic to publish to has no wildcards (+, #)")
        return value

    @field_validator("payload")
    @classmethod
    def _payload(cls, value: str | None) -> str | None:
        return None if value is None else check_template(value)


class WebhookAction(StrictModel):
    kind: Literal["webhook"]
    url: str = Field(pattern=r"^https?://")
    """POST the action as JSON here."""
    timeout_s: float = Field(5.0, gt=0, le=120)
    """Time limit of one POST, seconds."""
    max_retries: int = Field(3, ge=0, le=20)
    """Retries after a network error, 408, 429 or 5xx, with doubling back-off."""
    retry_backoff_s: float = Field(1.0, gt=0)
    """First back-off between retries, seconds."""
    max_queue: int = Field(100, ge=1)
    """Actions waiting to be posted; beyond, the oldest is dropped and counted."""
    token: str | None = None
    """Sent as 'Authorization: Bearer ...'; prefer EMOTION_MONITOR_WEBHOOK_TOKEN."""

    def bearer_token(self) -> str | None:
        return self.token or os.environ.get(WEBHOOK_TOKEN_ENV) or None


class CommandAction(StrictModel):
    kind: Literal["command"]
    argv: list[str] = Field(min_length=1)
    """The program and its arguments (templates), run without a shell; needs allow_commands: true."""
    timeout_s: float = Field(10.0, gt=0)
    """A run still going after this many seconds is killed (and counted as failed)."""
    max_running: int = Field(2, ge=1, le=64)
    """Runs of this action at once; a firing beyond is dropped and counted."""

    @field_validator("argv")
    @classmethod
    def _argv(cls, value: list[str]) -> list[str]:
        for arg in value:
            check_template(arg)
        if not value[0].strip():
            raise ValueError("argv[0] (the program) is empty")
        return value


class RosAction(StrictModel):
    kind: Literal["ros"]
    topic: str = Field("/emotion/expression", pattern=r"^/?[A-Za-z][A-Za-z0-9_/]*$")
    """The ROS 2 topic to advertise and publish on (through rosbridge, section ros)."""
    message_type: str = Field(
        "emotion_monitor_msgs/msg/Expression", pattern=r"^[A-Za-z0-9_]+/(msg/)?[A-Za-z0-9_]+$"
    )
    """emotion_monitor_msgs/msg/Expression (docs/ros2/) or std_msgs/msg/String (the action as JSON in data)."""
    max_queue: int = Field(100, ge=1)
    """Messages waiting while rosbridge is away; beyond, the oldest is dropped and counted."""


Action = Annotated[
    LogAction | MqttAction | WebhookAction | CommandAction | RosAction, Field(discriminator="kind")
]


class RuleConfig(StrictModel):
    name: str = Field(pattern=NAME)
    """The action's name, e.g. calm_down (unique among rules)."""
    streams: str = "*"
    """Glob on the stream id, e.g. head_mic or '*.caller' (default: every stream)."""
    label: str | None = None
    """The smoothed label must be this; null = any label."""
    min_confidence: float = Field(0.0, ge=0, le=1)
    """The smoothed score of the label must be at least this."""
    arousal_min: float | None = Field(None, ge=-1, le=1)
    arousal_max: float | None = Field(None, ge=-1, le=1)
    valence_min: float | None = Field(None, ge=-1, le=1)
    valence_max: float | None = Field(None, ge=-1, le=1)
    min_duration_s: float = Field(0.0, ge=0)
    """The condition holds this many seconds of audio before the rule fires."""
    cooldown_s: float = Field(60.0, ge=0)
    """At least this many seconds of audio between two firings of the rule on one stream."""
    max_gap_s: float = Field(5.0, gt=0)
    """A pause longer than this between matching speech estimates ends the episode (not with only_on_change)."""
    only_on_change: bool = False
    """Fire when the smoothed label changes to `label` (once per change), not per episode of matching speech."""
    actions: list[Action] = Field(min_length=1)
    """What to do when the rule fires: log, mqtt, webhook, command, ros."""

    @model_validator(mode="after")
    def _check(self) -> RuleConfig:
        bounds = (self.arousal_min, self.arousal_max, self.valence_min, self.valence_max)
        if self.label is None and self.min_confidence == 0 and all(b is None for b in bounds):
            raise ValueError(
                f"rule {self.name!r} has no condition; set label, min_confidence or an arousal/valence bound"
            )
        if self.only_on_change and self.label is None:
            raise ValueError(
                f"rule {self.name!r}: only_on_change needs a label (the label it changes to)"
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


class RobotConfig(StrictModel):
    input: InputConfig = Field(default_factory=InputConfig)
    mqtt: MqttConnection = Field(default_factory=MqttConnection)
    """The broker: the input when input.kind is mqtt, and where mqtt actions publish."""
    ros: RosConnection = Field(default_factory=RosConnection)
    """rosbridge, for ros actions."""
    allow_commands: bool = False
    """Allow command actions (they run programs on this machine): opt in."""
    rules: list[RuleConfig] = Field(min_length=1)
    """The rules, evaluated on every smoothed estimate and transition."""

    @field_validator("rules")
    @classmethod
    def _check_rules(cls, rules: list[RuleConfig], info: ValidationInfo) -> list[RuleConfig]:
        names = [r.name for r in rules]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"rule names must be unique; repeated: {dupes}")
        if not info.data.get("allow_commands"):
            for i, rule in enumerate(rules):
                for j, action in enumerate(rule.actions):
                    if isinstance(action, CommandAction):
                        raise ValueError(
                            f"rules.{i}.actions.{j} runs a command but allow_commands is false; "
                            "set allow_commands: true to let rules run programs on this machine"
                        )
        return rules

    def uses(self, kind: str) -> bool:
        """Whether a rule has an action of this kind."""
        return any(a.kind == kind for r in self.rules for a in r.actions)
