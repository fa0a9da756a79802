"""Home Assistant MQTT discovery: each stream as a device with four sensors.

Follows Home Assistant's documented single-component discovery
(https://www.home-assistant.io/integrations/mqtt/#mqtt-discovery and the MQTT
sensor's configuration variables): one retained JSON config per entity on

    <discovery_prefix>/sensor/<node_id>/<object_id>/config

with ``node_id`` made from the MQTT prefix and the stream id (only
``[A-Za-z0-9_-]``; a short hash is added when the stream id had to be changed,
so two streams never share one) and ``object_id`` one of ``label``,
``confidence``, ``arousal``, ``valence``.

==============  =============================  ==================================  =====
object_id       state_topic                    value_template                      unit
==============  =============================  ==================================  =====
``label``       ``<prefix>/<sid>/state``       ``{{ value_json.to }}``             --
``confidence``  ``<prefix>/<sid>/estimate``    ``confidence`` x 100, 1 decimal     ``%``
``arousal``     ``<prefix>/<sid>/estimate``    ``{{ value_json.arousal }}``        --
``valence``     ``<prefix>/<sid>/estimate``    ``{{ value_json.valence }}``        --
==============  =============================  ==================================  =====

The label comes from the retained ``state`` topic, so Home Assistant knows it
as soon as it subscribes. Availability is a list with ``availability_mode:
all``: the daemon's ``<prefix>/_daemon/status`` (its last will turns it
``offline`` when the daemon dies) and the stream's own ``status`` (``offline``
or ``error`` make the entity unavailable). An empty retained payload on each
config topic removes the entities (and the device) when a stream is gone for
good.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

OBJECTS: tuple[str, ...] = ("label", "confidence", "arousal", "valence")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("emotion-monitor")
    except Exception:
        return "unknown"


def node_id(prefix: str, stream_id: str) -> str:
    """The discovery topic's ``node_id`` for a stream: ``[A-Za-z0-9_-]`` only, unique per stream."""
    raw = f"{prefix}_{stream_id}"
    safe = _UNSAFE.sub("_", raw)
    if safe != raw:
        safe += "_" + hashlib.sha256(raw.encode()).hexdigest()[:6]
    return safe


def config_topic(discovery_prefix: str, prefix: str, stream_id: str, object_id: str) -> str:
    """``<discovery_prefix>/sensor/<node_id>/<object_id>/config``."""
    return f"{discovery_prefix}/sensor/{node_id(prefix, stream_id)}/{object_id}/config"


def discovery_configs(
    discovery_prefix: str, prefix: str, stream_id: str, stream_topic: str, *, qos: int = 1
) -> dict[str, dict[str, Any]]:
    """Config topic -> payload for the stream's four sensors.

    ``stream_topic`` is the stream's topic level under ``prefix`` (``<prefix>/<it>/estimate``).
    """
    node = node_id(prefix, stream_id)
    base = f"{prefix}/{stream_topic}"
    version = _version()
    device = {
        "identifiers": [f"emotion_monitor_{node}"],
        "name": f"Emotion {stream_id}",
        "manufacturer": "emotion-monitor",
        "model": "DropFormer speech-emotion monitor",
        "sw_version": version,
    }
    availability = [
        {
            "topic": f"{prefix}/_daemon/status",
            "value_template": "{{ value_json.state }}",
            "payload_available": "online",
            "payload_not_available": "offline",
        },
        {
            "topic": f"{base}/status",
            "value_template": "{{ 'offline' if value_json.state in ('offline', 'error') else 'online' }}",
            "payload_available": "online",
            "payload_not_available": "offline",
        },
    ]
    per_object: dict[str, dict[str, Any]] = {
        "label": {
            "name": "Label",
            "state_topic": f"{base}/state",
            "value_template": "{{ value_json.to }}",
            "icon": "mdi:emoticon-outline",
        },
        "confidence": {
            "name": "Confidence",
            "state_topic": f"{base}/estimate",
            "value_template": "{{ (value_json.confidence * 100) | round(1) }}",
            "unit_of_measurement": "%",
            "state_class": "measurement",
            "suggested_display_precision": 0,
            "icon": "mdi:gauge",
        },
        "arousal": {
            "name": "Arousal",
            "state_topic": f"{base}/estimate",
            "value_template": "{{ value_json.arousal }}",
            "state_class": "measurement",
            "suggested_display_precision": 2,
            "icon": "mdi:lightning-bolt-outline",
        },
        "valence": {
            "name": "Valence",
            "state_topic": f"{base}/estimate",
            "value_template": "{{ value_json.valence }}",
            "state_class": "measurement",
            "suggested_display_precision": 2,
            "icon": "mdi:emoticon-happy-outline",
        },
    }
    out = {}
    for obj in OBJECTS:
        out[config_topic(discovery_prefix, prefix, stream_id, obj)] = {
            **per_object[obj],
            "unique_id": f"emotion_monitor_{node}_{obj}",
            "qos": qos,
            "availability": availability,
            "availability_mode": "all",
            "device": device,
            "origin": {"name": "emotion-monitor", "sw_version": version},
        }
    return out
