"""The robot client on real speech: the real daemon (the bundled EmoDB log-mel model,
the energy gate) replays a file of real speech with a long pause, publishing on a
real mosquitto and into a JSONL file. The robot, subscribed live, fires exactly the
actions that ``emotion-monitor robot --dry-run`` prints for that JSONL file, and one
per episode. Also: the shipped config validates and documents every key, and the
command line names the key and the fix for a bad config."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import yaml

from clients.robot.app import RobotClient
from clients.robot.config import (
    CommandAction,
    InputConfig,
    LogAction,
    MqttAction,
    MqttConnection,
    RobotConfig,
    RosAction,
    RosConnection,
    RuleConfig,
    WebhookAction,
)
from dropformer.configio import load_yaml, validate
from streamer.config import DaemonConfig
from streamer.daemon import Daemon
from tests.fixtures.http import webhook_server
from tests.fixtures.network import eventually
from tests.fixtures.services import MosquittoBroker

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data" / "emodb"
MODEL = REPO / "dropformer" / "pretrained" / "emodb_logmel"
LINE = re.compile(
    r"^\s*([0-9.]+) s  (\S+)\s+(\S+) -> (.+?)  \((\S+) (\d+)%, episode ([0-9.]+) s, seq (\d+)\)$"
)


def speech_with_a_pause(folder: Path) -> Path:
    read = [
        sf.read(DATA / n, dtype="float32")[0]
        for n in ("03a01Wa.wav", "10a04Wb.wav", "03a02Ta.wav", "16a02Tc.wav")
    ]
    pause = np.zeros(6 * 16000, np.float32)
    path = folder / "two-episodes.wav"
    sf.write(path, np.concatenate([read[0], read[1], pause, read[2], read[3]]), 16000)
    return path


def rules(hook_url: str) -> list[dict[str, Any]]:
    post = [{"kind": "webhook", "url": hook_url, "retry_backoff_s": 0.05}]
    return [
        # min_confidence 0.01 holds for every speech estimate: the episodes are set by speech
        # and the 6 s pause alone, whatever the model hears in them: exactly two
        {"name": "speaking", "min_confidence": 0.01, "min_duration_s": 1.0, "max_gap_s": 2.5, "cooldown_s": 0,
         "actions": post},
        {"name": "calm_down", "label": "angry", "min_confidence": 0.5, "min_duration_s": 1.0, "cooldown_s": 0,
         "actions": post},
        {"name": "on_sad", "label": "sad", "only_on_change": True, "cooldown_s": 0, "actions": post},
        {"name": "on_angry", "label": "angry", "only_on_change": True, "cooldown_s": 0, "actions": post},
    ]  # fmt: skip


async def test_live_robot_fires_what_the_dry_run_prints(
    mosquitto_broker_home: MosquittoBroker, tmp_path: Path
) -> None:
    b = mosquitto_broker_home
    jsonl = tmp_path / "events.jsonl"
    daemon_cfg = validate(DaemonConfig, {
        "model": {"checkpoint": str(MODEL)},
        "windowing": {"first_window": "early"},
        "streams": [{"id": "head_mic", "source": {"path": str(speech_with_a_pause(tmp_path)), "realtime": False}}],
        "publish": {"websocket": {"enabled": False}, "jsonl": {"enabled": True, "path": str(jsonl)},
                    "mqtt": {"enabled": True, "host": b.host, "port": b.port, "username": "daemon",
                             "password": b.users["daemon"]}},
        "status_interval_s": None,
    })  # fmt: skip
    with webhook_server() as hook:
        robot_raw = {
            "input": {"kind": "mqtt"},
            "mqtt": {
                "host": b.host,
                "port": b.port,
                "username": "robot",
                "password": b.users["robot"],
            },
            "rules": rules(hook.url),
        }
        async with RobotClient(validate(RobotConfig, robot_raw)) as robot:
            stop = asyncio.Event()
            runner = asyncio.create_task(robot.run(stop))
            assert robot.mqtt is not None
            await eventually(lambda: robot.mqtt.subscribed, "the robot to subscribe")  # type: ignore[union-attr]
            async with Daemon(daemon_cfg) as daemon:
                await asyncio.wait_for(daemon.run(), 120)
            events = [yaml.safe_load(x) for x in jsonl.read_text().splitlines()]
            last_seq = max(e["seq"] for e in events if e["type"] == "emotion.estimate")
            await eventually(
                lambda: (st := robot.engine._streams.get("head_mic")) is not None
                and st.last_estimate is not None and st.last_estimate[0] == last_seq,
                "the robot to see every estimate", 30,
            )  # fmt: skip
            await eventually(
                lambda: len(hook.received) == sum(robot.engine.stats.fired.values()), "the webhook"
            )
            stop.set()
            await runner
    live = [(a["rule"], a["stream_id"], a["seq"]) for a in hook.received]

    config = tmp_path / "robot.yaml"
    config.write_text(yaml.safe_dump(robot_raw))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "streamer.cli", "robot", "--config", str(config), "--dry-run", str(jsonl),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert lines[-1].startswith("# ") and "speaking x2" in lines[-1]
    parsed = [LINE.match(x) for x in lines[:-1]]
    assert all(parsed), lines
    dry = [(m.group(3), m.group(2), int(m.group(8))) for m in parsed if m]
    assert sorted(live) == sorted(dry)  # live, over MQTT, exactly as offline
    assert [r for r, _, _ in dry].count("speaking") == 2  # once per episode of speech
    assert all(m.group(4) == "webhook" for m in parsed if m)


def test_shipped_robot_config_validates_and_documents_every_key() -> None:
    path = REPO / "configs" / "robot.yaml"
    cfg = validate(RobotConfig, load_yaml(path))
    assert (cfg.input, cfg.mqtt, cfg.ros, cfg.allow_commands) == (
        InputConfig(),
        MqttConnection(),
        RosConnection(),
        False,
    )
    text = path.read_text()
    for model in (InputConfig, MqttConnection, RosConnection, RuleConfig, LogAction, MqttAction,
                  WebhookAction, CommandAction, RosAction, RobotConfig):  # fmt: skip
        for key in model.model_fields:
            assert re.search(rf"^\s*#?\s*(- )?{key}:", text, re.M), (
                f"{model.__name__}.{key} is not in {path.name}"
            )
    assert re.search(r"^\s*# - kind: webhook", text, re.M) and re.search(
        r"^\s*# - kind: command", text, re.M
    )


def test_cli_names_the_bad_key(tmp_path: Path) -> None:
    bad = tmp_path / "robot.yaml"
    bad.write_text(
        "rules:\n  - name: r\n    label: angry\n    actions: [{kind: command, argv: [ls]}]\n"
    )
    proc = subprocess.run([sys.executable, "-m", "streamer.cli", "robot", "--config", str(bad),
                           "--set", "input.kindd=mqtt"], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2
    assert "input.kindd: unknown key; did you mean 'input.kind'?" in proc.stderr
    assert "allow_commands" in proc.stderr and "set allow_commands: true" in proc.stderr
