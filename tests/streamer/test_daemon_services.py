"""The daemon against real services: a password-protected mosquitto with an ACL,
a robot subscriber, the last will after kill -9, and a PulseAudio virtual mic."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from dropformer.configio import validate
from streamer.config import DaemonConfig
from streamer.core.events import validate_event
from streamer.daemon import Daemon
from tests.fixtures.services import MosquittoBroker, VirtualMic

DATA = Path(__file__).resolve().parents[1] / "data"


def mqtt_settings(broker: MosquittoBroker, **extra: Any) -> dict[str, Any]:
    return {
        "enabled": True,
        "host": broker.host,
        "port": broker.port,
        "username": "daemon",
        "password": broker.users["daemon"],
        **extra,
    }


async def collect(
    broker: MosquittoBroker, topic: str, until: Any, timeout_s: float, user: str = "robot"
) -> list[aiomqtt.Message]:
    got: list[aiomqtt.Message] = []
    async with broker.client(user) as c:
        await c.subscribe(topic, qos=1)
        async with asyncio.timeout(timeout_s):
            async for m in c.messages:
                got.append(m)
                if until(got):
                    break
    return got


async def test_robot_subscriber_sees_estimates_utterances_state_and_status(
    mosquitto_broker: MosquittoBroker, tiny_checkpoint: Path
) -> None:
    wav = DATA / "emodb" / "03a01Wa.wav"
    cfg = validate(
        DaemonConfig,
        {
            "model": {"checkpoint": str(tiny_checkpoint)},
            "gate": {"kind": "none"},
            "windowing": {"first_window": "early"},
            "streams": [{"id": "agent", "source": {"path": str(wav), "realtime": False}}],
            "publish": {"websocket": {"enabled": False}, "mqtt": mqtt_settings(mosquitto_broker)},
        },
    )
    robot = asyncio.create_task(
        collect(
            mosquitto_broker,
            "emotion/agent/#",
            # retained topics go out first (the publisher's order), so the stream's last
            # utterance may follow its offline status: wait for both
            lambda ms: (
                any(
                    m.topic.matches("emotion/agent/status")
                    and json.loads(m.payload)["state"] == "offline"
                    for m in ms
                )
                and any(m.topic.matches("emotion/agent/utterance") for m in ms)
            ),
            60,
        )
    )
    await asyncio.sleep(0.5)
    async with Daemon(cfg) as daemon:
        await asyncio.wait_for(daemon.run(), 60)
    live = await robot
    estimates = [json.loads(m.payload) for m in live if m.topic.matches("emotion/agent/estimate")]
    assert len(estimates) >= 1 and estimates[0]["stream_id"] == "agent"
    assert any(m.topic.matches("emotion/agent/state") for m in live)
    # gate none: the whole file is one utterance, classified at the end of the stream
    (utterance,) = [m for m in live if m.topic.matches("emotion/agent/utterance")]
    validate_event(json.loads(utterance.payload))
    assert not utterance.retain and json.loads(utterance.payload)["seq"] == 0
    # A robot that connects now gets the retained state (current label) and status at once.
    late = await collect(
        mosquitto_broker, "emotion/#", lambda ms: len({str(m.topic) for m in ms}) >= 3, 10
    )
    retained = {str(m.topic): json.loads(m.payload) for m in late if m.retain}
    assert retained["emotion/agent/state"]["to"] == estimates[-1]["label"]
    assert retained["emotion/agent/status"]["state"] == "offline"
    assert retained["emotion/_daemon/status"]["state"] == "offline"


def test_last_will_after_kill_9(
    mosquitto_broker: MosquittoBroker, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    wav = DATA / "emodb" / "03a01Wa.wav"
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "EMOTION_MONITOR_MQTT_PASSWORD": mosquitto_broker.users["daemon"],
    }
    cmd = [
        sys.executable,
        "-m",
        "streamer.cli",
        "run",
        "--set",
        f"model.checkpoint={tiny_checkpoint}",
        "--set",
        "publish.websocket.enabled=false",
        "--set",
        "gate.kind=none",
        "--set",
        f"streams=[{{id: mic0, source: {{path: {wav}, loop: true}}}}]",
        "--set",
        "publish.mqtt.enabled=true",
        "--set",
        f"publish.mqtt.port={mosquitto_broker.port}",
        "--set",
        "publish.mqtt.username=daemon",
        "--set",
        "publish.mqtt.keepalive_s=1",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:

        async def scenario() -> list[dict[str, Any]]:
            async with mosquitto_broker.client() as c:
                await c.subscribe("emotion/#", qos=1)
                seen: list[dict[str, Any]] = []
                killed = False
                async with asyncio.timeout(60):
                    async for m in c.messages:
                        doc = json.loads(m.payload)
                        seen.append({"topic": str(m.topic), **doc})
                        if not killed and m.topic.matches("emotion/mic0/estimate"):
                            os.kill(proc.pid, signal.SIGKILL)  # no chance to say goodbye
                            killed = True
                        elif (
                            killed
                            and m.topic.matches("emotion/_daemon/status")
                            and doc["state"] == "offline"
                        ):
                            return seen
                return seen

        seen = asyncio.run(scenario())
    finally:
        proc.kill()
        proc.wait()
    daemon_status = [s for s in seen if s["topic"] == "emotion/_daemon/status"]
    assert daemon_status[0]["state"] == "online" and daemon_status[-1]["state"] == "offline"
    assert any(s["topic"] == "emotion/mic0/estimate" for s in seen)


async def test_wrong_password_does_not_stop_the_daemon(
    mosquitto_broker: MosquittoBroker, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    wav = DATA / "emodb" / "03a01Wa.wav"
    cfg = validate(
        DaemonConfig,
        {
            "model": {"checkpoint": str(tiny_checkpoint)},
            "gate": {"kind": "none"},
            "windowing": {"first_window": "early"},
            "streams": [{"id": "a", "source": {"path": str(wav), "realtime": False}}],
            "publish": {
                "websocket": {"enabled": False},
                "jsonl": {"enabled": True, "path": str(tmp_path / "e.jsonl")},
                "mqtt": mqtt_settings(mosquitto_broker, password="wrong"),
            },
        },
    )
    async with Daemon(cfg) as daemon:
        await asyncio.wait_for(daemon.run(), 60)
        mqtt = dict(daemon.hub.publishers)["mqtt"]
        assert mqtt.last_error is not None and not mqtt.connected
    lines = (tmp_path / "e.jsonl").read_text().splitlines()
    assert any(
        '"emotion.estimate"' in line for line in lines
    )  # the JSONL sink still got everything


@pytest.mark.timeout(120)
async def test_microphone_stream_from_virtual_mic(
    pulse_virtual_mic: VirtualMic, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    cfg = validate(
        DaemonConfig,
        {
            "model": {"checkpoint": str(tiny_checkpoint)},
            "windowing": {"window_s": 1.5, "hop_s": 0.5},
            "streams": [
                {"id": "mic0", "source": {"kind": "microphone", "device": pulse_virtual_mic.device}}
            ],
            "publish": {
                "websocket": {"enabled": False},
                "jsonl": {"enabled": True, "path": str(tmp_path / "e.jsonl")},
            },
        },
    )
    speech = [DATA / "emodb" / n for n in ("03a01Wa.wav", "03a01Fa.wav", "03a02Ta.wav")]

    def events() -> list[dict[str, Any]]:
        p = tmp_path / "e.jsonl"
        return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []

    async with Daemon(cfg) as daemon:
        runner = asyncio.create_task(daemon.run())
        deadline = time.monotonic() + 60
        # Silence first: the gate must hold windows back and say so.
        while not any(e["type"] == "stream.status" and e["state"] == "silence" for e in events()):
            assert time.monotonic() < deadline, "no silence status from the idle microphone"
            await asyncio.sleep(0.2)
        for wav in speech:
            player = pulse_virtual_mic.play(wav)
            await asyncio.to_thread(player.wait, 30)
        while not any(e["type"] == "emotion.estimate" and e["speech"] for e in events()):
            assert time.monotonic() < deadline, "no speech estimate from the virtual microphone"
            await asyncio.sleep(0.2)
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner
    evs = events()
    states = [e["state"] for e in evs if e["type"] == "stream.status"]
    assert "speech" in states and "silence" in states
    speech_est = [e for e in evs if e["type"] == "emotion.estimate" and e["speech"]]
    assert speech_est[0]["tokens"]["in"] > 0 and speech_est[0]["latency_ms"] > 0
