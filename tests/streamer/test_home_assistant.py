"""Home Assistant MQTT discovery against a real mosquitto and a real daemon.

Home Assistant itself needs a newer Python than these machines have, so the
retained discovery configs are read back from the broker and checked key by key
against the MQTT sensor's documented configuration variables
(https://www.home-assistant.io/integrations/sensor.mqtt/, its device and
availability keys, and the discovery page's topic format and ``origin`` keys),
and their templates are rendered with Jinja2 on the real payloads, as Home
Assistant renders them. Every event payload that leaves the daemon (MQTT,
WebSocket, JSONL) is validated against the schema on the way.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
from websockets.asyncio.client import connect

from streamer.config import MqttConfig
from streamer.core.events import validate_event
from streamer.publishers.base import encode
from streamer.publishers.mqtt import MqttPublisher
from tests.fixtures.network import daemon_config, eventually, ingest_session, running, speech
from tests.fixtures.services import MosquittoBroker

DATA = Path(__file__).resolve().parents[1] / "data" / "emodb"
NoneType = type(None)

# The MQTT sensor's configuration variables (name -> allowed JSON types), as documented.
SENSOR_KEYS: dict[str, tuple[type, ...]] = {
    "availability": (list,), "availability_mode": (str,), "availability_template": (str,),
    "availability_topic": (str,), "device": (dict,), "device_class": (str, NoneType),
    "enabled_by_default": (bool,), "encoding": (str,), "entity_category": (str,),
    "entity_picture": (str,), "expire_after": (int,), "force_update": (bool,), "icon": (str,),
    "json_attributes_template": (str,), "json_attributes_topic": (str,),
    "last_reset_value_template": (str,), "name": (str, NoneType), "object_id": (str,),
    "options": (list,), "payload_available": (str,), "payload_not_available": (str,),
    "suggested_display_precision": (int,), "qos": (int,), "state_class": (str,),
    "state_topic": (str,), "unique_id": (str,), "unit_of_measurement": (str, NoneType),
    "value_template": (str,),
    "origin": (dict,),  # from the discovery documentation (recommended for single components)
}  # fmt: skip
AVAILABILITY_KEYS = {"topic": (str,), "payload_available": (str,), "payload_not_available": (str,),
                     "value_template": (str,)}  # fmt: skip
DEVICE_KEYS = {"configuration_url": (str,), "connections": (list,), "hw_version": (str,),
               "identifiers": (str, list), "manufacturer": (str,), "model": (str,), "model_id": (str,),
               "name": (str,), "serial_number": (str,), "suggested_area": (str,), "sw_version": (str,),
               "via_device": (str,)}  # fmt: skip
ORIGIN_KEYS = {"name": (str,), "sw_version": (str,), "support_url": (str,)}
TOPIC = re.compile(r"^homeassistant/sensor/([A-Za-z0-9_-]+)/([A-Za-z0-9_-]+)/config$")
JINJA = jinja2.Environment(autoescape=False)


def check_keys(doc: dict[str, Any], allowed: dict[str, tuple[type, ...]], where: str) -> None:
    for key, value in doc.items():
        assert key in allowed, f"{where}: {key!r} is not a documented Home Assistant key"
        assert isinstance(value, allowed[key]), (
            f"{where}.{key}: {type(value).__name__} is not {allowed[key]}"
        )


def check_sensor_config(topic: str, doc: dict[str, Any]) -> None:
    """One discovery config against Home Assistant's documented schema."""
    m = TOPIC.match(topic)
    assert m, f"{topic} is not <discovery_prefix>/sensor/<node_id>/<object_id>/config"
    check_keys(doc, SENSOR_KEYS, topic)
    for key in (
        "state_topic",
        "unique_id",
        "device",
        "availability",
        "value_template",
        "name",
        "origin",
    ):
        assert key in doc, f"{topic}: {key} is missing"
    assert doc["availability_mode"] in ("all", "any", "latest")
    assert "availability_topic" not in doc  # must not be used together with `availability`
    assert doc.get("state_class", "measurement") in ("measurement", "total", "total_increasing")
    assert doc["qos"] in (0, 1, 2)
    for i, item in enumerate(doc["availability"]):
        check_keys(item, AVAILABILITY_KEYS, f"{topic}.availability.{i}")
        assert "topic" in item
    check_keys(doc["device"], DEVICE_KEYS, f"{topic}.device")
    assert doc["device"]["identifiers"] and doc["device"]["name"]
    check_keys(doc["origin"], ORIGIN_KEYS, f"{topic}.origin")
    assert doc["origin"]["name"]
    for key in ("value_template", *(k for k in doc if k.endswith("_template"))):
        JINJA.from_string(doc[key])  # templates parse


def render(template: str, payload: bytes) -> str:
    """A template as Home Assistant renders it on an MQTT payload (``value``, ``value_json``)."""
    text = payload.decode()
    return JINJA.from_string(template).render(value=text, value_json=json.loads(text)).strip()


def available(doc: dict[str, Any], latest: dict[str, bytes]) -> bool | None:
    """Home Assistant's availability with ``availability_mode: all`` (None: not known yet)."""
    verdicts = []
    for item in doc["availability"]:
        if item["topic"] not in latest:
            return None
        got = render(item.get("value_template", "{{ value }}"), latest[item["topic"]])
        assert got in (
            item.get("payload_available", "online"),
            item.get("payload_not_available", "offline"),
        )
        verdicts.append(got == item.get("payload_available", "online"))
    return all(verdicts)


class Watcher:
    """Every MQTT message under emotion/# and homeassistant/#, as seen by the robot user."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self.latest: dict[str, bytes] = {}

    def configs(self) -> dict[str, bytes]:
        return {t: p for t, p in self.latest.items() if t.startswith("homeassistant/")}


@asynccontextmanager
async def watching(broker: MosquittoBroker) -> AsyncIterator[Watcher]:
    w = Watcher()
    async with broker.client() as c:
        await c.subscribe("emotion/#", qos=1)
        await c.subscribe("homeassistant/#", qos=1)

        async def read() -> None:
            async for m in c.messages:
                assert isinstance(m.payload, bytes)
                w.messages.append((str(m.topic), m.payload, bool(m.retain)))
                w.latest[str(m.topic)] = m.payload

        task = asyncio.create_task(read())
        try:
            yield w
        finally:
            task.cancel()
            await asyncio.wait([task])


def mqtt(broker: MosquittoBroker, **extra: Any) -> dict[str, Any]:
    return {"enabled": True, "host": broker.host, "port": broker.port, "username": "daemon",
            "password": broker.users["daemon"], "home_assistant": True, **extra}  # fmt: skip


async def test_discovery_configs_entities_and_removal(
    mosquitto_broker_home: MosquittoBroker, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    b = mosquitto_broker_home
    jsonl = tmp_path / "events.jsonl"
    cfg = daemon_config(tiny_checkpoint, publish={"mqtt": mqtt(b), "jsonl": {
        "enabled": True, "path": str(jsonl), "importance": True}})  # fmt: skip
    audio = np.concatenate([speech("03a01Wa.wav"), np.zeros(8000, np.float32)])
    ws_messages: list[dict[str, Any]] = []
    async with watching(b) as w, running(cfg) as (daemon, tap, url):

        async def read_ws() -> None:
            async with connect(f"{url}/ws") as ws:
                async for raw in ws:
                    ws_messages.append(json.loads(raw))

        reader = asyncio.create_task(read_ws())
        await eventually(lambda: ws_messages, "the WebSocket hello")
        session = asyncio.create_task(ingest_session(url, "hall.mic", audio, speed=4.0))
        await eventually(
            lambda: len(w.configs()) == 4 and any(t.endswith("/estimate") for t in w.latest),
            "the discovery configs and an estimate",
        )
        configs = {t: json.loads(p) for t, p in w.configs().items()}
        for topic, doc in configs.items():
            check_sensor_config(topic, doc)
        assert {TOPIC.match(t).group(2) for t in configs} == {
            "label",
            "confidence",
            "arousal",
            "valence",
        }  # type: ignore[union-attr]
        nodes = {TOPIC.match(t).group(1) for t in configs}  # type: ignore[union-attr]
        assert len(nodes) == 1 and next(iter(nodes)).startswith(
            "emotion_hall_mic_"
        )  # '.' is not allowed
        assert len({d["unique_id"] for d in configs.values()}) == 4
        assert (
            len({json.dumps(d["device"], sort_keys=True) for d in configs.values()}) == 1
        )  # one device
        by_obj = {TOPIC.match(t).group(2): d for t, d in configs.items()}  # type: ignore[union-attr]
        assert by_obj["confidence"]["unit_of_measurement"] == "%"
        assert [a["topic"] for a in by_obj["label"]["availability"]] == [
            "emotion/_daemon/status",
            "emotion/hall.mic/status",
        ]
        assert all(d["availability_mode"] == "all" for d in configs.values())
        # Rendered on the real payloads as Home Assistant would: the entities' states.
        await eventually(lambda: "emotion/hall.mic/state" in w.latest, "the label")
        estimate = json.loads(w.latest["emotion/hall.mic/estimate"])
        assert render(by_obj["label"]["value_template"], w.latest["emotion/hall.mic/state"]) in (
            "neutral",
            "happy",
            "angry",
            "sad",
        )
        assert float(
            render(by_obj["confidence"]["value_template"], w.latest["emotion/hall.mic/estimate"])
        ) == round(estimate["confidence"] * 100, 1)
        assert (
            float(
                render(by_obj["valence"]["value_template"], w.latest["emotion/hall.mic/estimate"])
            )
            == estimate["valence"]
        )
        assert available(by_obj["label"], w.latest) is True
        await session
        # The network stream ended for good: offline, then its entities are removed.
        await eventually(lambda: all(w.latest[t] == b"" for t in configs), "empty retained configs")
        assert available(by_obj["label"], w.latest) is False  # its status said offline first
        reader.cancel()
    async with watching(b) as late:
        await eventually(lambda: "emotion/_daemon/status" in late.latest, "retained state")
        await asyncio.sleep(0.3)
    assert late.configs() == {}  # nothing left for Home Assistant to rediscover

    # Every event payload that left the daemon validates: MQTT, WebSocket (hello too), JSONL.
    mqtt_events = [json.loads(p) for t, p, _ in w.messages if t.startswith("emotion/") and p]
    assert {e["type"] for e in mqtt_events} >= {
        "emotion.estimate",
        "emotion.transition",
        "stream.status",
        "daemon.status",
    }
    jsonl_events = [json.loads(x) for x in jsonl.read_text().splitlines()]
    ws_events = [m for m in ws_messages if m["type"] != "hello"]
    for hello in (m for m in ws_messages if m["type"] == "hello"):
        ws_events += [*hello["last_status"].values(), *hello["last_estimate"].values()]
    for e in (*mqtt_events, *jsonl_events, *ws_events):
        validate_event(e)

    # Token importance: on for the WebSocket (default) and this JSONL file, off for MQTT (default).
    def speech_estimates(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [e for e in events if e["type"] == "emotion.estimate" and e["speech"]]

    assert all("importance" not in e for e in mqtt_events)
    for events in (ws_events, jsonl_events):
        got = speech_estimates(events)
        assert got and all(e["importance"]["tokens"] == e["tokens"]["in"] for e in got)


async def test_availability_flips_offline_when_the_daemon_is_killed(
    mosquitto_broker_home: MosquittoBroker, tiny_checkpoint: Path
) -> None:
    b = mosquitto_broker_home
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "EMOTION_MONITOR_MQTT_PASSWORD": b.users["daemon"],
    }
    wav = DATA / "03a01Wa.wav"
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
        f"streams=[{{id: living_room, source: {{path: {wav}, loop: true}}}}]",
        "--set",
        "publish.mqtt.enabled=true",
        "--set",
        f"publish.mqtt.port={b.port}",
        "--set",
        "publish.mqtt.username=daemon",
        "--set",
        "publish.mqtt.keepalive_s=1",
        "--set",
        "publish.mqtt.home_assistant=true",
    ]
    async with watching(b) as w:
        proc = await asyncio.create_subprocess_exec(
            *cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            await eventually(
                lambda: len(w.configs()) == 4 and "emotion/living_room/estimate" in w.latest,
                "discovery and an estimate",
                90,
            )
            configs = {t: json.loads(p) for t, p in w.configs().items()}
            for topic, doc in configs.items():
                check_sensor_config(topic, doc)
            assert all(available(d, w.latest) is True for d in configs.values())
            proc.send_signal(signal.SIGKILL)  # no goodbye: only the broker's last will speaks
            await eventually(
                lambda: json.loads(w.latest["emotion/_daemon/status"])["state"] == "offline",
                "the last will",
                30,
            )
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
    status = json.loads(w.latest["emotion/living_room/status"])
    assert status["state"] not in (
        "offline",
        "error",
    )  # the stream's own status could not change...
    assert all(
        available(d, w.latest) is False for d in configs.values()
    )  # ...yet every entity is unavailable
    assert all(w.latest[t] for t in configs)  # and not removed: the stream is not gone for good


async def test_offline_on_close_is_schema_valid_and_entities_stay(
    mosquitto_broker_home: MosquittoBroker,
) -> None:
    """A graceful close marks streams that did not say goodbye offline with a full,
    schema-valid status (their last one, offline), and keeps their entities."""
    b = mosquitto_broker_home
    status = {"type": "stream.status", "v": 1, "stream_id": "kitchen", "state": "speech", "audio_ms": 4200,
              "counters": {"windows": 4, "inferred": 3, "skipped_stale": 0, "skipped_silence": 1,
                           "dropped_frames": 0, "bad_samples": 0}}  # fmt: skip
    async with watching(b) as w:
        async with MqttPublisher(MqttConfig(host=b.host, port=b.port, username="daemon", password=b.users["daemon"],
                                            home_assistant=True, discovery_prefix="homeassistant")) as pub:  # fmt: skip
            pub.publish(encode(status))
            pub.publish(
                encode({**status, "stream_id": "porch", "state": "offline"})
            )  # said goodbye itself
            await eventually(lambda: len(w.configs()) == 8, "two streams announced")
        await eventually(
            lambda: json.loads(w.latest["emotion/_daemon/status"])["state"] == "offline", "goodbye"
        )
    kitchen = json.loads(w.latest["emotion/kitchen/status"])
    validate_event(kitchen)
    assert kitchen == {**status, "state": "offline", "detail": "daemon stopped"}
    assert [json.loads(p)["state"] for t, p, _ in w.messages if t == "emotion/porch/status"] == [
        "offline"
    ]
    validate_event(json.loads(w.latest["emotion/_daemon/status"]))
    assert all(w.latest[t] for t in w.configs())  # configured streams keep their entities
