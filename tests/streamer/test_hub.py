"""Hub: fan-out with isolated failures, and the per-stream snapshot."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import TracebackType

import pytest

from streamer.config import JsonlConfig
from streamer.hub import Hub
from streamer.publishers.base import Message, PublisherStats
from streamer.publishers.jsonl import JsonlSink


class BrokenPublisher:
    """A real publisher whose bug raises on every other event."""

    def __init__(self) -> None:
        self.stats = PublisherStats()
        self.calls = 0

    async def __aenter__(self) -> BrokenPublisher:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def publish(self, message: Message) -> None:
        self.calls += 1
        if self.calls % 2:
            raise KeyError("label")
        self.stats.published += 1


def status(sid: str, state: str) -> dict[str, object]:
    return {"type": "stream.status", "v": 1, "stream_id": sid, "state": state}


def estimate(sid: str, seq: int) -> dict[str, object]:
    return {"type": "emotion.estimate", "v": 1, "stream_id": sid, "seq": seq, "label": "sad"}


async def test_failing_publisher_does_not_stop_the_others(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    hub = Hub()
    broken = hub.add(BrokenPublisher(), "broken")
    before = hub.add(JsonlSink(JsonlConfig(path=str(tmp_path / "a.jsonl"))), "before")
    after = hub.add(JsonlSink(JsonlConfig(path=str(tmp_path / "b.jsonl"))), "after")
    events = [estimate("mic0", i) for i in range(10)]
    with caplog.at_level(logging.ERROR, logger="streamer.hub"):
        async with hub:
            for e in events:
                hub.publish(e)
    for sink, name in ((before, "a"), (after, "b")):
        lines = (tmp_path / f"{name}.jsonl").read_text().splitlines()
        assert [json.loads(line) for line in lines] == events
        assert sink.stats.published == 10
    assert hub.errors["broken"] == 5 and broken.stats.published == 5
    assert hub.stats()["publishers"]["broken"]["errors"] == 5
    assert "publisher broken failed" in caplog.text


def test_snapshot_keeps_the_last_status_and_estimate_per_stream() -> None:
    hub = Hub()
    for e in (
        status("a", "online"),
        estimate("a", 1),
        status("b", "online"),
        status("a", "speech"),
        estimate("a", 2),
        {"type": "alert", "v": 1},
    ):
        hub.publish(e)
    snap = hub.snapshot()
    assert snap["streams"] == ["a", "b"]
    assert snap["last_status"]["a"]["state"] == "speech"
    assert snap["last_status"]["b"]["state"] == "online"
    assert snap["last_estimate"]["a"]["seq"] == 2 and "b" not in snap["last_estimate"]
    assert hub.events == 6
