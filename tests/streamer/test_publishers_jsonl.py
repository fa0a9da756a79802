"""JsonlSink writes every event as one line, and rotates."""

from __future__ import annotations

import json
import math
from pathlib import Path

from streamer.config import JsonlConfig
from streamer.hub import Hub
from streamer.publishers.base import encode
from streamer.publishers.jsonl import JsonlSink


def event(i: int) -> dict[str, object]:
    return {
        "type": "emotion.estimate",
        "v": 1,
        "stream_id": "mic0",
        "seq": i,
        "label": "neutral",
        "scores": {"neutral": 0.5, "sad": 0.5},
        "text": 'äö\n"x"',
    }


async def test_lines_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "events.jsonl"
    events = [event(i) for i in range(500)]
    hub = Hub()
    sink = hub.add(JsonlSink(JsonlConfig(path=str(path))))
    async with hub:
        for e in events:
            hub.publish(e)
        hub.publish({"type": "emotion.estimate", "v": 1, "confidence": math.nan})  # not JSON
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == events
    assert sink.stats.published == 500 and hub.invalid == 1 and sink.stats.dropped == 0


async def test_appends_and_rotates(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    async with JsonlSink(JsonlConfig(path=str(path))) as sink:
        sink.publish(encode(event(-1)))
    async with JsonlSink(
        JsonlConfig(path=str(path), rotate_mb=0.01)
    ) as sink:  # rotate every ~10 kB
        for i in range(300):
            sink.publish(encode(event(i)))
    assert sink.rotations >= 2
    files, seqs = read_rotated(path)
    kept = [s for s in seqs if s >= 0]
    # Every rotated file keeps whole lines; the newest ones are all there, in order.
    assert kept == list(range(kept[0], 300))
    assert all(p.stat().st_size < 12_000 for p in files)


def read_rotated(path: Path) -> tuple[list[Path], list[int]]:
    """Files oldest first (events.jsonl.N ... .1, then events.jsonl) and their seqs."""
    files = sorted(path.parent.glob(path.name + ".*"), key=lambda p: -int(p.suffix[1:])) + [path]
    return files, [json.loads(line)["seq"] for p in files for line in p.read_text().splitlines()]
