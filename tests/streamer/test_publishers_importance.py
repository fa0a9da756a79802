"""Each publisher keeps or leaves out the estimates' ``importance`` as configured
(a real WebSocket client, a real file); the hello follows the same choice."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from streamer.config import JsonlConfig, WebSocketConfig
from streamer.core.events import EmotionEstimate, EmotionTransition, validate_event
from streamer.hub import Hub
from streamer.publishers.base import encode
from streamer.publishers.jsonl import JsonlSink
from streamer.publishers.websocket import WebSocketPublisher

IMPORTANCE = {
    "layer": 4,
    "tokens": 6,
    "values": [0.0, None, 1.0],
    "dropped": "84",
    "envelope": [0.1, 0.9],
}


def estimate(seq: int, importance: dict[str, Any] | None = IMPORTANCE) -> dict[str, Any]:
    scores = {"neutral": 0.1, "happy": 0.1, "angry": 0.7, "sad": 0.1}
    doc = EmotionEstimate("mic0", seq, 0, 3000 + seq * 500, True, "angry", 0.7, scores, scores, 0.6, -0.5,
                          6, 4, 12.0, {"name": "dropformer", "frontend": "logmel80", "rev": "t"},
                          importance).to_dict()  # fmt: skip
    validate_event(doc)
    return doc


@pytest.mark.parametrize("keep", [True, False])
async def test_websocket_events_and_hello(keep: bool) -> None:
    hub = Hub()
    pub = hub.add(
        WebSocketPublisher(WebSocketConfig(port=0, importance=keep), snapshot=hub.snapshot)
    )
    async with hub:
        hub.publish(estimate(0))
        hub.publish(estimate(1, None))  # e.g. a silent window: no importance
        hub.publish(EmotionTransition("mic0", 0, 3000, None, "angry", 0.7).to_dict())
        async with connect(pub.url) as ws:
            hello = json.loads(await ws.recv())
            hub.publish(estimate(2))
            live = json.loads(await ws.recv())
    assert hello["transitions"]["mic0"][0]["to"] == "angry"  # the label so far, for late clients
    assert "importance" not in hello["last_estimate"]["mic0"]  # the last estimate had none
    if keep:
        assert hello["last_importance"]["mic0"]["importance"] == IMPORTANCE
        assert live["importance"] == IMPORTANCE
    else:
        assert "last_importance" not in hello and "importance" not in live
    validate_event(live)


@pytest.mark.parametrize("keep", [True, False])
async def test_jsonl(tmp_path: Path, keep: bool) -> None:
    path = tmp_path / "e.jsonl"
    async with JsonlSink(JsonlConfig(path=str(path), importance=keep)) as sink:
        sink.publish(encode(estimate(0)))
    (line,) = path.read_text().splitlines()
    assert ("importance" in json.loads(line)) is keep
