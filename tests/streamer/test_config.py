"""The daemon's config: shipped YAML files validate, errors name the key and the fix."""

import subprocess
import sys
from pathlib import Path

import pytest

from dropformer.configio import load_config, load_yaml, validate
from dropformer.errors import ConfigError
from streamer.config import DaemonConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


CLIENT_CONFIGS = {
    "robot.yaml"
}  # the robot client's (tests/clients/test_robot_speech.py validates it)


@pytest.mark.parametrize("path", sorted(p for p in CONFIGS.glob("*.yaml") if p.name not in CLIENT_CONFIGS),
                         ids=lambda p: p.name)  # fmt: skip
def test_shipped_configs_validate(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMOTION_MONITOR_TOKEN", "a-token-of-24-characters")
    cfg = validate(DaemonConfig, load_yaml(path))
    assert cfg.streams or cfg.ingest.any_enabled


def test_default_yaml_documents_the_built_in_defaults() -> None:
    assert validate(DaemonConfig, load_yaml(CONFIGS / "default.yaml")) == DaemonConfig()


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("windowing.window_s=abc", "windowing.window_s"),
        (
            "windowing.windw_s=3",
            "windowing.windw_s: unknown key; did you mean 'windowing.window_s'?",
        ),
        ("windowing.min_window_s=5", "min_window_s (5.0) must not exceed window_s"),
        ("worker.max_batch=0", "worker.max_batch"),
        ("streams=[{id: 'a b'}]", "streams.0.id"),
        (
            "streams=[{id: m, source: {kind: microphone, sample_rate_hz: 0}}]",
            "streams.0.source.sample_rate_hz",
        ),
        ("streams=[{id: a}, {id: a}]", "repeated: ['a']"),
        ("gate.kind=loud", "gate.kind"),
        ("utterance.min_s=20", "set utterance.min_s <= 10.0 or raise utterance.max_s"),
        ("utterance.max_s=0", "utterance.max_s"),
        ("quality.enabled=maybe", "quality.enabled"),
    ],
)
def test_bad_values_name_the_key(override: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate(DaemonConfig, load_config(None, [override]))
    assert expected in str(err.value)
    assert any(fix in str(err.value) for fix in ("--set", "must", "did you mean"))


def test_set_override_parsing() -> None:
    raw = load_config(
        CONFIGS / "default.yaml", ["streams.0.source.realtime=false", "publish.mqtt.qos=2"]
    )
    cfg = validate(DaemonConfig, raw)
    assert cfg.streams[0].source.realtime is False  # type: ignore[union-attr]
    assert cfg.publish.mqtt.qos == 2
    with pytest.raises(ConfigError, match="no '='"):
        load_config(None, ["window_s"])
    with pytest.raises(ConfigError, match="not an index"):
        load_config(CONFIGS / "default.yaml", ["streams.5.id=x"])


def test_cli_reports_bad_config_and_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("windowing:\n  window_s: [1, 2]\n  bogus: 1\n")
    proc = subprocess.run(
        [sys.executable, "-m", "streamer.cli", "run", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "windowing.window_s" in proc.stderr and "windowing.bogus: unknown key" in proc.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "streamer.cli", "run", "--config", str(tmp_path / "nope.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 2 and "does not exist" in missing.stderr


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            b"windowing:\n  hop_s: 0.5\n  hop_s: 2\n",
            "key 'hop_s' appears twice",
        ),  # not silently last-wins
        (bytes(range(256)), "is not UTF-8 text"),  # a binary file: an error, not a traceback
    ],
)
def test_duplicate_keys_and_binary_files_are_clear_errors(
    tmp_path: Path, content: bytes, expected: str
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(content)
    proc = subprocess.run(
        [sys.executable, "-m", "streamer.cli", "run", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and expected in proc.stderr and "Traceback" not in proc.stderr


def test_help_lists_subcommands() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "streamer.cli", "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0
    for name in ("run", "devices", "bench", "train", "evaluate", "explain"):
        assert name in proc.stdout


def test_set_reaches_into_default_streams_without_a_file() -> None:
    from streamer.commands.run import DEFAULTS

    raw = load_config(None, ["streams.0.source.realtime=false", "streams.0.id=lobby"], DEFAULTS)
    cfg = validate(DaemonConfig, raw)
    assert cfg.streams[0].id == "lobby" and cfg.streams[0].source.realtime is False  # type: ignore[union-attr]
    assert cfg.streams[0].source.loop is True  # the rest of the default stream is kept  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["streams=[]", "ingest.enabled=false"], "at least one stream is needed"),
        (["publish.websocket.host=0.0.0.0"], "publish.websocket.host=0.0.0.0 is not loopback"),
        (["publish.websocket.host=0.0.0.0", "ingest.enabled=false"], "access.allow_insecure=true"),
        (["access.require_token=true"], "EMOTION_MONITOR_TOKEN"),
        (["access.token=short"], "access.token"),
        (["ingest.token=abcdefghijklmnopqrstuvwxyz"], "ingest.token is now access.token"),
        (["access.allowed_origins=[evil.example]"], "must be scheme://host[:port]"),
        (["access.token_file=/nonexistent/token"], "cannot be read"),
        (["ingest.path=/ws"], "must differ"),
        (["ingest.twilio.enabled=true", "ingest.twilio.path=/healthz"], "must differ"),
        (
            ["publish.websocket.enabled=false", "ingest.twilio.enabled=true"],
            "publish.websocket.enabled=true",
        ),
        (["publish.websocket.enabled=false", "streams=[]"], "at least one stream is needed"),
        (["ingest.twilio.inbound_name=agent"], "must differ"),
        (["ingest.max_speed=0.5"], "ingest.max_speed"),
        (["alerts.rules=[{name: r1}]"], "has no condition"),
        (["alerts.rules=[{name: r1, label: angry}, {name: r1, label: sad}]"], "repeated: ['r1']"),
        (
            ["alerts.rules=[{name: r1, arousal_min: 0.5, arousal_max: 0.1}]"],
            "arousal_min (0.5) exceeds",
        ),
        (["alerts.webhook.url=ftp://x"], "alerts.webhook.url"),
    ],
)
def test_network_and_alert_settings_are_checked(
    overrides: list[str], expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EMOTION_MONITOR_TOKEN", raising=False)
    monkeypatch.delenv("EMOTION_MONITOR_INGEST_TOKEN", raising=False)
    with pytest.raises(ConfigError) as err:
        validate(DaemonConfig, load_config(None, overrides))
    assert expected in str(err.value)


def test_network_only_daemon_and_token_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("EMOTION_MONITOR_TOKEN", raising=False)
    monkeypatch.delenv("EMOTION_MONITOR_INGEST_TOKEN", raising=False)
    cfg = validate(DaemonConfig, load_config(None, ["streams=[]"]))
    assert cfg.streams == [] and cfg.ingest.enabled and cfg.access.bearer_token() is None
    # without the WebSocket server the default ingest has no port: not an error, just off
    cfg = validate(DaemonConfig, load_config(None, ["publish.websocket.enabled=false"]))
    assert not cfg.network_enabled
    monkeypatch.setenv("EMOTION_MONITOR_TOKEN", "from-the-environment-123")
    cfg = validate(
        DaemonConfig, load_config(None, ["streams=[]", "publish.websocket.host=0.0.0.0"])
    )
    assert cfg.access.bearer_token() == "from-the-environment-123" and not cfg.insecure
    monkeypatch.delenv("EMOTION_MONITOR_TOKEN")
    monkeypatch.setenv(
        "EMOTION_MONITOR_INGEST_TOKEN", "the-old-variable-name-12"
    )  # still read, with a warning
    assert (
        validate(DaemonConfig, load_config(None, [])).access.bearer_token()
        == "the-old-variable-name-12"
    )
    monkeypatch.delenv("EMOTION_MONITOR_INGEST_TOKEN")
    secret = tmp_path / "token"
    secret.write_text("from-a-file-0123456789\n")
    cfg = validate(
        DaemonConfig,
        load_config(None, [f"access.token_file={secret}", "publish.websocket.host=0.0.0.0"]),
    )
    assert cfg.access.bearer_token() == "from-a-file-0123456789"
    # without a token, a non-loopback host starts only with allow_insecure (and a loud warning)
    cfg = validate(
        DaemonConfig,
        load_config(None, ["publish.websocket.host=0.0.0.0", "access.allow_insecure=true"]),
    )
    assert cfg.insecure
    from streamer.config import config_summary

    cfg = validate(DaemonConfig, load_config(None, ["access.token=in-the-file-0123456789"]))
    assert "in-the-file" not in str(config_summary(cfg))  # secrets are not printed
