"""Alerts end to end: real speech over /ingest, the real energy gate and model;
one episode gives exactly one alert, on WebSocket, MQTT (real mosquitto) and a
real local webhook, every payload schema-valid."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import connect

from dropformer.errors import ConfigError
from streamer.core.events import validate_event
from streamer.daemon import Daemon
from tests.fixtures.http import webhook_server
from tests.fixtures.network import daemon_config, ingest_session, running, speech
from tests.fixtures.services import MosquittoBroker

SPEECH = speech("16a02Wb.wav", "16a04Fa.wav")  # 3.8 s of one speaker
SILENCE = np.zeros(16000 * 6, np.float32)


def rules() -> list[dict[str, Any]]:
    # min_confidence 0.01 holds for every speech estimate (4 classes: the label's score
    # is at least 0.25), so the episodes are set by speech and silence alone, not by
    # what the small model thinks of them.
    common = {"min_confidence": 0.01, "min_duration_s": 1.0, "max_gap_s": 3.0}
    return [
        {"name": "talking", "cooldown_s": 0, **common},
        {"name": "talking_rarely", "cooldown_s": 60, "severity": "critical", **common},
        {"name": "other_streams", "streams": "*.agent", **common},
    ]


async def test_one_alert_per_episode_everywhere(mosquitto_broker: MosquittoBroker) -> None:
    audio = np.concatenate([SPEECH, SILENCE, SPEECH])  # two episodes, 6 s apart
    b = mosquitto_broker
    with webhook_server() as hook:
        hook.statuses = [503]  # the first delivery fails once and is retried
        cfg = daemon_config(
            gate={"kind": "energy"},
            windowing={"first_window": "full"},
            alerts={"rules": rules(), "webhook": {"url": hook.url, "retry_backoff_s": 0.05}},
            publish={
                "mqtt": {
                    "enabled": True,
                    "host": b.host,
                    "port": b.port,
                    "username": "daemon",
                    "password": b.users["daemon"],
                }
            },  # fmt: skip
        )
        mqtt_alerts: list[dict[str, Any]] = []
        ws_alerts: list[dict[str, Any]] = []
        async with b.client() as robot:
            await robot.subscribe("emotion/+/alert", qos=1)

            async def read_mqtt() -> None:
                async for m in robot.messages:
                    mqtt_alerts.append(json.loads(m.payload))

            reader = asyncio.create_task(read_mqtt())
            async with running(cfg) as (daemon, tap, url):

                async def read_ws() -> None:
                    async with connect(f"{url}/ws") as ws:
                        async for raw in ws:
                            msg = json.loads(raw)
                            if msg["type"] == "alert":
                                ws_alerts.append(msg)

                ws_reader = asyncio.create_task(read_ws())
                await asyncio.sleep(0.2)
                result = await ingest_session(url, "desk1.caller", audio, speed=10.0,
                                              metadata={"role": "caller"})  # fmt: skip
                assert result["close_code"] == 1000
                for cond in (lambda: len(ws_alerts) == 3, lambda: len(mqtt_alerts) == 3,
                             lambda: len(hook.received) == 3):  # fmt: skip
                    await tap.wait(cond, 15)
                await asyncio.sleep(0.3)  # nothing more arrives
                ws_reader.cancel()
                webhook = daemon.hub.publishers[-1][1]
                assert daemon.health()["hub"]["publishers"]["webhook"]["retries"] == 1
                assert webhook.stats.dropped == 0
            reader.cancel()
    speech_est = tap.estimates("desk1.caller")
    assert len(speech_est) >= 6  # both sentences were analysed
    alerts = tap.of("alert")
    kinds = [a["kind"] for a in alerts]
    # "talking": one alert per episode (two episodes); "talking_rarely": the second
    # episode falls in its 60 s cool-down; "other_streams" watches *.agent only
    assert (
        kinds.count("talking") == 2
        and kinds.count("talking_rarely") == 1
        and "other_streams" not in kinds
    )
    first, second = (a for a in alerts if a["kind"] == "talking")
    assert first["audio_ms"] < 5000 < 9000 < second["episode_start_ms"]
    assert second["audio_ms"] - second["episode_start_ms"] >= 1000
    for got in (ws_alerts, mqtt_alerts, hook.received):
        assert sorted(a["kind"] for a in got) == sorted(kinds)
        for a in got:
            validate_event(a)
            assert a["stream_id"] == "desk1.caller"


async def test_a_rule_for_a_label_the_model_lacks_stops_start_up() -> None:
    cfg = daemon_config(alerts={"rules": [{"name": "x", "label": "furious"}]})
    with pytest.raises(ConfigError, match=r"alerts\.rules\.0\.label = 'furious'.*neutral"):
        async with Daemon(cfg):
            pass
