"""The robot client against real components: a real mosquitto (restarted mid-run), the
daemon's real MQTT and WebSocket publishers (the WebSocket one restarted like a daemon),
a real local HTTP server for the webhook, real processes for the command action, and a
local WebSocket server speaking enough of rosbridge v2 for roslibpy (there is no ROS 2
here: the exact advertise/publish messages it receives are checked).

The events are the daemon's, with known emotion changes (tests/clients/test_robot_rules.py's
``Daemon``); tests/clients/test_robot_speech.py runs the real daemon on real speech.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from clients.robot.app import RobotClient
from clients.robot.config import RobotConfig
from dropformer.configio import validate
from streamer.publishers.base import encode
from tests.clients.test_robot_rules import Daemon
from tests.fixtures.http import Recorder, webhook_server
from tests.fixtures.network import eventually
from tests.fixtures.publishers import mqtt_publisher, websocket_publisher
from tests.fixtures.services import MosquittoBroker, free_port

FAST = {"reconnect_min_s": 0.05, "reconnect_max_s": 0.3}


def calm_down(**extra: Any) -> dict[str, Any]:
    """The issue's example rule: angry >= 0.6 for 2 s on a *_mic stream -> calm_down."""
    return {"name": "calm_down", "streams": "*_mic", "label": "angry", "min_confidence": 0.6,
            "min_duration_s": 2, "cooldown_s": 5, "max_gap_s": 3, **extra}  # fmt: skip


@asynccontextmanager
async def robot(raw: dict[str, Any]) -> AsyncIterator[RobotClient]:
    async with RobotClient(validate(RobotConfig, raw)) as client:
        stop = asyncio.Event()
        runner = asyncio.create_task(client.run(stop))
        try:
            yield client
        finally:
            stop.set()
            await asyncio.wait_for(runner, 10)


def publish(pub: Any, *streams: list[dict[str, Any]]) -> None:
    """Hand the streams' events to a publisher, interleaved as a daemon would."""
    for group in itertools.zip_longest(*streams):
        for event in group:
            if event is not None:
                pub.publish(encode(event))


def fired(hook: Recorder, sid: str | None = None) -> list[dict[str, Any]]:
    return [a for a in hook.received if sid is None or a["stream_id"] == sid]


def seen(client: RobotClient, sid: str) -> int:
    """The seq of the latest estimate the robot has seen on a stream (-1: none)."""
    st = client.engine._streams.get(sid)
    return st.last_estimate[0] if st is not None and st.last_estimate is not None else -1


@pytest.mark.timeout(120)
async def test_mqtt_broker_restart_no_duplicate_no_lost_episode(
    mosquitto_broker_home: MosquittoBroker,
) -> None:
    b = mosquitto_broker_home
    with webhook_server() as hook:
        hook.statuses = [503]  # the first POST fails and is retried: still once
        cfg = {
            # the robot comes back 3-6 s after the broker went away; the daemon's publisher at once
            "input": {"kind": "mqtt", "reconnect_min_s": 6.0, "reconnect_max_s": 6.0},
            "mqtt": {"host": b.host, "port": b.port, "username": "robot", "password": b.users["robot"]},
            "rules": [calm_down(actions=[{"kind": "log"},
                                         {"kind": "webhook", "url": hook.url, "retry_backoff_s": 0.05}])],
        }  # fmt: skip
        head, arm = Daemon("head_mic"), Daemon("arm_mic")
        async with mqtt_publisher(b.host, b.port, username="daemon", password=b.users["daemon"],
                                 reconnect_min_s=0.05, reconnect_max_s=0.3) as pub, robot(cfg) as bot:  # fmt: skip
            assert bot.mqtt is not None
            link = bot.mqtt
            got: list[tuple[str, int]] = []  # the estimates the robot's rules saw
            feed = bot.engine.feed

            def tap(event: dict[str, Any], *, replayed: bool = False) -> list[Any]:
                if event.get("type") == "emotion.estimate":
                    got.append((event["stream_id"], event["seq"]))
                return feed(event, replayed=replayed)

            bot.engine.feed = tap  # type: ignore[method-assign]
            await eventually(
                lambda: pub.connected and bot.engine.stats.events > 0, "both connected"
            )
            # 1. head_mic: neutral, then angry from 2.0 s (fires at 4.0 s); arm_mic angry all along (fires at 2.5 s)
            publish(
                pub, head.step("neutral", n=3) + head.step("angry", n=9), arm.step("angry", n=12)
            )
            await eventually(
                lambda: len(fired(hook)) == 2 and seen(bot, "head_mic") == 11, "the first episodes"
            )
            # 2. the broker restarts; while the robot is still away, head_mic calms down and gets
            #    angry again (from 8.0 s) and arm_mic stays angry: the robot misses all of it
            await asyncio.to_thread(b.restart)
            await eventually(
                lambda: pub.connects >= 2 and pub.connected and not link.connected,
                "the daemon back",
            )
            missed = head.step("neutral", n=3) + head.step("angry", n=3), arm.step("angry", n=6)
            publish(pub, *missed)
            await eventually(lambda: pub.health()["queued"] == 0 and pub.health()["retained_pending"] == 0,
                             "the daemon's publisher to send it")  # fmt: skip
            assert not link.connected, "the robot came back too early for this test"
            await eventually(lambda: link.connects >= 2, "the robot back", 30)
            # 3. both go on angry
            publish(pub, head.step("angry", n=8), arm.step("angry", n=8))
            await eventually(lambda: seen(bot, "head_mic") == head.seq - 1 and seen(bot, "arm_mic") == arm.seq - 1,
                             "the last estimates")  # fmt: skip
            await eventually(lambda: hook.attempts == len(fired(hook)) + 1, "the webhook to settle")
        stats = bot.stats()
    assert not {
        (e["stream_id"], e["seq"]) for m in missed for e in m if e["type"] == "emotion.estimate"
    } & set(got)
    head_actions, arm_actions = fired(hook, "head_mic"), fired(hook, "arm_mic")
    assert len(arm_actions) == 1, arm_actions  # one episode across the restart: no duplicate
    # the episode that began while the robot was away was not lost (the retained state told)
    assert [a["audio_ms"] for a in head_actions] == [
        4000,
        11500,
    ]  # angry again since 8.0 s; seen from 9.5 s
    assert all(a["type"] == "robot.action" and a["rule"] == "calm_down" and a["label"] == "angry"
               and a["confidence"] >= 0.6 for a in hook.received)  # fmt: skip
    assert stats["fired"] == {"calm_down": 3} and stats["outputs"]["calm_down:webhook"]["sent"] == 3
    assert stats["outages"] >= 1 and stats["mqtt"]["connects"] == 2


@pytest.mark.timeout(120)
async def test_websocket_daemon_restart_mqtt_command_and_a_real_process(
    mosquitto_broker_home: MosquittoBroker, tmp_path: Path
) -> None:
    b = mosquitto_broker_home
    port = free_port()
    out = tmp_path / "said.txt"
    script = "import sys; open(sys.argv[1], 'a').write(' '.join(sys.argv[2:]) + '\\n')"
    cfg = {
        "input": {"kind": "websocket", "url": f"ws://127.0.0.1:{port}/ws", **FAST},
        "mqtt": {"host": b.host, "port": b.port, "username": "robot", "password": b.users["robot"]},
        "allow_commands": True,
        "rules": [calm_down(actions=[
            {"kind": "mqtt", "topic": "robot/{stream_id}/cmd", "qos": 1, "retain": True, "payload": "calm_down {label}"},
            {"kind": "command", "argv": [sys.executable, "-c", script, str(out), "{rule}", "{stream_id}", "{label}"]},
        ])],
    }  # fmt: skip
    commands: list[tuple[str, str, bool]] = []
    async with b.client() as listener:
        await listener.subscribe("robot/#", qos=1)

        async def listen() -> None:
            async for m in listener.messages:
                assert isinstance(m.payload, bytes)
                commands.append((str(m.topic), m.payload.decode(), bool(m.retain)))

        reader = asyncio.create_task(listen())
        head = Daemon("head_mic")
        async with robot(cfg) as bot:
            async with websocket_publisher(port=port) as ws:
                await eventually(lambda: ws.clients, "the robot to connect")
                publish(ws, head.step("neutral", n=2) + head.step("angry", n=6))
                await eventually(lambda: len(commands) == 1 and out.exists(), "the first action")
            # the daemon goes away and comes back: a new session, seq and audio time from 0
            head.restart()
            async with websocket_publisher(port=port) as ws:
                await eventually(lambda: ws.clients, "the robot to reconnect", 30)
                publish(ws, [{"type": "stream.status", "v": 1, "stream_id": "head_mic", "state": "online",
                              "audio_ms": 0, "counters": {}}])  # fmt: skip
                publish(ws, head.step("angry", n=8))  # the same anger goes on: no second action
                publish(
                    ws, head.step("neutral", n=2) + head.step("angry", n=6)
                )  # 10 s later, a new episode
                await eventually(lambda: seen(bot, "head_mic") == head.seq - 1, "the last estimate")
                await eventually(lambda: len(commands) == 2, "the second action")
                await asyncio.sleep(0.3)  # anything more would have come by now
            stats = bot.stats()
        reader.cancel()
    assert (
        commands == [("robot/head_mic/cmd", "calm_down angry", False)] * 2
    )  # live: retain flag is for late joiners
    assert (
        out.read_text().splitlines() == ["calm_down head_mic angry"] * 2
    )  # the real process ran, once per episode
    assert stats["restarts"] == 1 and stats["websocket"]["connects"] == 2
    assert stats["outputs"]["calm_down:command"] == {"sent": 2, "dropped": 0, "failed": 0}
    async with b.client() as late:
        await late.subscribe("robot/#", qos=1)
        async with asyncio.timeout(10):
            async for m in late.messages:
                assert m.retain and m.payload == b"calm_down angry"  # retain as the rule chose
                break


class Rosbridge:
    """Enough of rosbridge v2 on a WebSocket for a client to connect, advertise and publish:
    records every JSON message it receives (there is no ROS 2 on these machines)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.received: list[dict[str, Any]] = []
        self.connections = 0

    async def handler(self, conn: ServerConnection) -> None:
        self.connections += 1
        async for raw in conn:
            msg = json.loads(raw)
            assert isinstance(msg, dict) and isinstance(msg.get("op"), str), msg
            self.received.append(msg)

    def ops(self, op: str) -> list[dict[str, Any]]:
        return [m for m in self.received if m["op"] == op]


@asynccontextmanager
async def rosbridge(bridge: Rosbridge) -> AsyncIterator[Rosbridge]:
    async with serve(bridge.handler, "127.0.0.1", bridge.port):
        yield bridge


async def test_ros2_through_rosbridge_messages(tmp_path: Path) -> None:
    ws_port, ros_port = free_port(), free_port()
    cfg = {
        "input": {"kind": "websocket", "url": f"ws://127.0.0.1:{ws_port}/ws", **FAST},
        "ros": {"host": "127.0.0.1", "port": ros_port, "reconnect_min_s": 0.2, "reconnect_max_s": 0.5},
        "rules": [
            calm_down(actions=[{"kind": "ros"}]),
            {"name": "smile", "label": "happy", "only_on_change": True, "cooldown_s": 0,
             "actions": [{"kind": "ros", "topic": "/robot/say", "message_type": "std_msgs/msg/String"}]},
        ],
    }  # fmt: skip
    bridge = Rosbridge(ros_port)
    head = Daemon("head_mic")
    async with websocket_publisher(port=ws_port) as ws, rosbridge(bridge), robot(cfg) as bot:
        assert bot.ros is not None
        await eventually(lambda: ws.clients and bot.ros.connected, "connections")  # type: ignore[union-attr]
        publish(ws, head.step("neutral", n=2) + head.step("angry", n=6) + head.step("happy", n=2))
        await eventually(lambda: len(bridge.ops("publish")) == 2, "two publish messages")
    advertise = sorted(bridge.ops("advertise"), key=lambda m: m["topic"])
    assert [(m["topic"], m["type"]) for m in advertise] == [
        ("/emotion/expression", "emotion_monitor_msgs/msg/Expression"),
        ("/robot/say", "std_msgs/msg/String"),
    ]
    assert all(m["id"].startswith("advertise:") for m in advertise)
    calm, smile = bridge.ops("publish")
    assert calm["topic"] == "/emotion/expression"
    msg = calm["msg"]
    assert set(msg) == {"time", "rule", "stream", "expression", "confidence", "arousal", "valence"}
    assert (msg["rule"], msg["stream"], msg["expression"]) == ("calm_down", "head_mic", "angry")
    assert (msg["confidence"], msg["arousal"], msg["valence"]) == (0.8, 0.6, -0.5)
    assert (
        set(msg["time"]) == {"sec", "nanosec"}
        and msg["time"]["sec"] > 1.6e9
        and 0 <= msg["time"]["nanosec"] < 1e9
    )
    assert smile["topic"] == "/robot/say" and json.loads(smile["msg"]["data"])["rule"] == "smile"
    # each publish follows its topic's advertise on the same connection
    order = [(m["op"], m["topic"]) for m in bridge.received]
    assert order.index(("advertise", "/emotion/expression")) < order.index(
        ("publish", "/emotion/expression")
    )
