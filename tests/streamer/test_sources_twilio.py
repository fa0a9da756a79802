"""Twilio Media Streams against the real daemon: a made-up call whose two legs are
two EmoDB speakers with different emotions, sent as Twilio messages (8 kHz mu-law,
base64) by a real WebSocket client; estimates on the right streams, on a real
mosquitto, the agent leg only when enabled; bad input isolated per call."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from streamer.core.events import validate_event
from tests.fixtures.network import (
    CALL_SID,
    at_8k,
    daemon_config,
    eventually,
    running,
    speech,
    twilio_call,
    twilio_messages,
)
from tests.fixtures.services import MosquittoBroker

CALLER = at_8k(speech("03a01Wa.wav", "03a01Wa.wav"))  # speaker 03, angry
AGENT = at_8k(speech("10a02Na.wav", "10a02Na.wav"))  # speaker 10, neutral
CALLER_SID, AGENT_SID = f"{CALL_SID}.caller", f"{CALL_SID}.agent"
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@asynccontextmanager
async def robot(broker: MosquittoBroker) -> AsyncIterator[list[aiomqtt.Message]]:
    """A subscriber on emotion/# (read-only user) collecting every message."""
    got: list[aiomqtt.Message] = []
    async with broker.client() as c:
        await c.subscribe("emotion/#", qos=1)

        async def read() -> None:
            async for m in c.messages:
                got.append(m)

        reader = asyncio.create_task(read())
        try:
            yield got
        finally:
            reader.cancel()


def mqtt(broker: MosquittoBroker) -> dict[str, Any]:
    return {"mqtt": {"enabled": True, "host": broker.host, "port": broker.port, "username": "daemon",
                     "password": broker.users["daemon"]}}  # fmt: skip


def on(messages: list[aiomqtt.Message], topic: str) -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in messages if m.topic.matches(topic)]


async def until(cond: Any, timeout_s: float = 20.0) -> None:
    await eventually(cond, "MQTT messages or daemon events", timeout_s)


async def test_two_legs_caller_only_by_default_on_mqtt(mosquitto_broker: MosquittoBroker) -> None:
    cfg = daemon_config(ingest={"twilio": {"enabled": True}}, publish=mqtt(mosquitto_broker))
    async with robot(mosquitto_broker) as messages, running(cfg) as (daemon, tap, url):
        code, _ = await twilio_call(
            url, twilio_messages({"inbound": CALLER, "outbound": AGENT}), speed=8
        )
        assert code == 1000
        # retained state goes out before queued estimates (by design): wait for both
        await until(lambda: on(messages, f"emotion/{CALLER_SID}/status")
                    and on(messages, f"emotion/{CALLER_SID}/status")[-1]["state"] == "offline"
                    and len(on(messages, f"emotion/{CALLER_SID}/estimate")) == len(tap.of("emotion.estimate", CALLER_SID)))  # fmt: skip
        caller = tap.estimates(CALLER_SID)
        assert (
            len(caller) >= 3
            and not tap.of("emotion.estimate", AGENT_SID)
            and not tap.of("stream.status", AGENT_SID)
        )
        # the same estimates reached a robot over MQTT, each one schema-valid
        mqtt_est = on(messages, f"emotion/{CALLER_SID}/estimate")
        assert sorted(e["seq"] for e in mqtt_est) == [
            e["seq"] for e in tap.of("emotion.estimate", CALLER_SID)
        ]
        assert not [m for m in messages if AGENT_SID in str(m.topic)]
        for m in messages:
            if "_daemon" not in str(m.topic):  # the daemon's own liveness document is not an event
                validate_event(json.loads(m.payload))
        statuses = [s["state"] for s in tap.of("stream.status", CALLER_SID)]
        assert statuses[0] == "online" and statuses[-1] == "offline"
        assert daemon.health()["network"] == {
            "active": 0,
            "sessions": 1,
            "refused": 0,
            "closed": {},
            "errors": {},
        }
        assert daemon.cores == {}
    # a robot that connects later sees the call leg retained as offline
    async with robot(mosquitto_broker) as late:
        await until(lambda: on(late, f"emotion/{CALLER_SID}/status"))
        assert on(late, f"emotion/{CALLER_SID}/status")[-1]["state"] == "offline"


async def test_agent_leg_only_when_enabled(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    cfg = daemon_config(
        ingest={"analyse_agent": True, "twilio": {"enabled": True, "outbound_name": "agent"}}
    )
    async with running(cfg) as (daemon, tap, url):
        code, _ = await twilio_call(
            url, twilio_messages({"inbound": CALLER, "outbound": AGENT}), speed=8
        )
        assert code == 1000
    assert "analyse_agent is on" in caplog.text and "AI Act" in caplog.text
    caller, agent = tap.estimates(CALLER_SID), tap.estimates(AGENT_SID)
    assert len(caller) >= 3 and len(agent) >= 3
    # two voices, never mixed: every window of one leg scores differently from the other's
    # (the small EmoDB model is not asked for particular labels on phone-band audio)
    assert all(a["raw"] != b["raw"] for a, b in zip(caller, agent))
    for sid in (CALLER_SID, AGENT_SID):
        assert tap.final_status(sid)["state"] == "offline"


@pytest.mark.parametrize("agent", [False, True], ids=["caller-only", "agent-leg-on"])
async def test_agent_leg_warns_at_start_up_naming_the_ai_act(
    agent: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Enabling the agent leg logs one WARNING at start-up, from the Twilio source, naming
    Article 5(1)(f) and docs/intended-use.md; the default (caller only) logs none."""
    caplog.set_level(logging.WARNING)
    cfg = daemon_config(ingest={"analyse_agent": agent, "twilio": {"enabled": True}})
    async with running(cfg):
        warned = [
            r.getMessage()
            for r in caplog.records
            if r.name == "streamer.sources.twilio" and r.levelno == logging.WARNING
        ]
    if agent:
        assert len(warned) == 1, warned
        assert "Article 5(1)(f)" in warned[0] and "docs/intended-use.md" in warned[0]
        assert "<callSid>.agent" in warned[0]
    else:
        assert warned == []
        assert "Article 5(1)(f)" not in caplog.text


async def test_bad_twilio_input_is_counted_and_the_call_goes_on() -> None:
    cfg = daemon_config(ingest={"twilio": {"enabled": True}, "max_speed": 3.0, "burst_s": 1.0})
    async with running(cfg) as (daemon, tap, url):
        other_sid = "CA" + "0ther" * 6 + "00"
        other = asyncio.create_task(twilio_call(url, twilio_messages({"inbound": CALLER}, call_sid=other_sid),
                                                speed=2, tracks=1))  # fmt: skip
        msgs = twilio_messages({"inbound": CALLER})
        media = msgs[2]
        bad = [
            msgs[0],
            "{not json",
            media,  # media before start
            msgs[1],  # start
            media.replace('"inbound"', '"outbound"'),  # a track start did not announce
            json.dumps(
                {"event": "media", "media": {"track": "inbound", "payload": "@@@not-base64@@@"}}
            ),
            json.dumps({"event": "dtmf", "dtmf": {"track": "inbound_track", "digit": "1"}}),
        ]
        code, _ = await twilio_call(url, bad + msgs[2:], speed=2, tracks=1)
        assert code == 1000
        assert daemon.health()["network"]["errors"] == {
            "bad_message": 1,
            "not_started": 1,
            "unknown_track": 1,
            "bad_payload": 1,
        }
        assert len(tap.estimates(CALLER_SID)) >= 3
        assert tap.final_status(CALLER_SID)["counters"]["dropped_frames"] == 1  # the bad payload

        # a flood closes only that call (4429)
        flood = twilio_messages({"inbound": CALLER}, call_sid="CA" + "f100d" * 6 + "00")
        async with connect(f"{url}/twilio") as ws:
            for m in flood:
                await ws.send(m)
            await ws.wait_closed()
        assert ws.close_code == 4429

        # Twilio vanishes mid-call: the leg goes offline and is released
        gone_sid = "CA" + "90e" * 10 + "00"
        gone = twilio_messages({"inbound": CALLER}, call_sid=gone_sid)
        ws = await connect(f"{url}/twilio")
        for m in gone[:60]:
            await ws.send(m)
        await until(lambda: tap.of("stream.status", f"{gone_sid}.caller"))
        ws.transport.abort()
        await until(lambda: tap.of("stream.status", f"{gone_sid}.caller")[-1]["state"] == "offline")

        assert (await other)[0] == 1000
        assert len(tap.estimates(f"{other_sid}.caller")) >= 3
        assert tap.final_status(f"{other_sid}.caller")["counters"]["dropped_frames"] == 0
        await until(lambda: daemon.cores == {})


async def test_token_in_custom_parameters() -> None:
    token = "call-centre-token-0123456789"
    cfg = daemon_config(access={"token": token}, ingest={"twilio": {"enabled": True}})
    async with running(cfg) as (daemon, tap, url):
        code, reason = await twilio_call(url, twilio_messages({"inbound": CALLER[:8000]}), tracks=1)
        assert code == 4401 and "Parameter" in str(reason)
        code, _ = await twilio_call(
            url, twilio_messages({"inbound": CALLER[:8000]}, custom={"token": "wrong"}), tracks=1
        )
        assert code == 4401
        code, _ = await twilio_call(
            url, twilio_messages({"inbound": CALLER}, custom={"token": token}), speed=8, tracks=1
        )
        assert code == 1000 and tap.estimates(CALLER_SID)
        assert daemon.health()["network"]["closed"] == {"unauthorized": 2}


def test_payload_helper_is_twilio_shaped() -> None:
    msgs = twilio_messages({"inbound": CALLER[:320], "outbound": AGENT[:320]})
    kinds = [json.loads(m)["event"] for m in msgs]
    assert kinds == ["connected", "start", "media", "media", "media", "media", "stop"]
    m = json.loads(msgs[2])
    assert len(base64.b64decode(m["media"]["payload"])) == 160  # 20 ms of 8 kHz mu-law


async def test_call_centre_config_monitors_a_call(
    mosquitto_broker: MosquittoBroker, tmp_path: Path
) -> None:
    """configs/call-centre.yaml as shipped (only ports, broker account and file paths
    changed), run as a user runs it: a Twilio call's caller leg is analysed, the
    agent's is not, estimates reach MQTT, a call without the token is refused."""
    from tests.fixtures.services import free_port

    token = "call-centre-token-0123456789abcdef"
    port, jsonl = free_port(), tmp_path / "calls.jsonl"
    b = mosquitto_broker
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "EMOTION_MONITOR_TOKEN": token,
           "EMOTION_MONITOR_MQTT_PASSWORD": b.users["daemon"]}  # fmt: skip
    cmd = [sys.executable, "-m", "streamer.cli", "run", "--config", str(CONFIGS / "call-centre.yaml"),
           "--set", f"publish.websocket.port={port}", "--set", f"publish.mqtt.port={b.port}",
           "--set", "publish.mqtt.username=daemon", "--set", "publish.mqtt.prefix=emotion",
           "--set", f"publish.jsonl.path={jsonl}", "--set", "ingest.max_speed=10", "--set", "ingest.burst_s=10"]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        await eventually(
            lambda: _port_open(port) or proc.returncode is not None, "the daemon's port", 60
        )
        assert proc.returncode is None, "the daemon exited"
        url = f"ws://127.0.0.1:{port}"
        async with robot(b) as messages:
            code, _ = await twilio_call(url, twilio_messages({"inbound": CALLER[:8000]}), tracks=1)
            assert code == 4401
            msgs = twilio_messages({"inbound": CALLER, "outbound": AGENT}, custom={"token": token})
            code, _ = await twilio_call(url, msgs, speed=8)
            assert code == 1000
            await until(lambda: on(messages, f"emotion/{CALLER_SID}/status")
                        and on(messages, f"emotion/{CALLER_SID}/status")[-1]["state"] == "offline")  # fmt: skip
            assert on(messages, f"emotion/{CALLER_SID}/estimate")
            assert not [m for m in messages if AGENT_SID in str(m.topic)]
        with pytest.raises(InvalidStatus):  # no generic /ingest in this set-up
            async with connect(f"{url}/ingest"):
                pass
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        raw, _ = await asyncio.wait_for(proc.communicate(), 30)
    out = raw.decode()
    assert proc.returncode == 0, out
    assert token not in out  # the secret never reaches the log
    events = [json.loads(line) for line in jsonl.read_text().splitlines()]
    for ev in events:
        validate_event(ev)
    assert {e["stream_id"] for e in events} == {CALLER_SID}
    assert any(e["type"] == "emotion.estimate" for e in events)


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0
