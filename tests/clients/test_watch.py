"""``emotion-monitor watch`` as a real subprocess against a real WebSocketPublisher."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from streamer.core.events import (
    Alert,
    EmotionEstimate,
    EmotionTransition,
    EmotionUtterance,
    Quality,
    StreamStatus,
)
from streamer.publishers.base import encode
from streamer.publishers.websocket import WebSocketPublisher
from tests.fixtures.publishers import websocket_publisher
from tests.fixtures.services import free_port

HANG_GUARD_S = 60.0  # only guards against a hung subprocess; never a pass/fail threshold
LABELS = ("neutral", "happy", "angry", "sad")


def estimate(sid: str, seq: int, label: str, p: float = 0.7) -> dict[str, Any]:
    rest = (1 - p) / 3
    scores = {lab: (p if lab == label else rest) for lab in LABELS}
    return EmotionEstimate(
        stream_id=sid,
        seq=seq,
        audio_start_ms=seq * 500,
        audio_end_ms=seq * 500 + 3000,
        speech=True,
        label=label,
        confidence=p,
        scores=scores,
        raw=scores,
        arousal=0.62,
        valence=-0.48,
        tokens_in=150,
        tokens_kept=98,
        latency_ms=38.2,
        model={"name": "dropformer", "frontend": "logmel80", "rev": "t", "random_init": False},
    ).to_dict()


@contextlib.asynccontextmanager
async def publishing(
    pub: WebSocketPublisher, tick: Callable[[int], list[dict[str, Any]]]
) -> AsyncIterator[None]:
    """Publish ``tick(i)``'s events every 50 ms while the body runs (a live daemon)."""

    async def loop() -> None:
        i = 0
        while True:
            for event in tick(i):
                pub.publish(encode(event))
            i += 1
            await asyncio.sleep(0.05)

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def run_watch(*args: str) -> tuple[int, str, str]:
    """Run ``python -m streamer.cli watch ARGS``; return (status, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "streamer.cli",
        "watch",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), HANG_GUARD_S)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        raise AssertionError(f"watch did not exit; stderr:\n{err.decode()}") from None
    return int(proc.returncode or 0), out.decode(), err.decode()


async def test_json_lines_count_from_config_overridden_by_flag(tmp_path: Path) -> None:
    async with websocket_publisher(port=0) as pub:
        cfg = tmp_path / "watch.yaml"
        cfg.write_text(f"url: {pub.url}\njson: true\ncount: 100\n", encoding="utf-8")
        async with publishing(pub, lambda i: [estimate("mic0", i, "angry")]):
            rc, out, err = await run_watch("--config", str(cfg), "--count", "3")
    assert rc == 0, err
    lines = out.splitlines()
    assert len(lines) == 3, out
    events = [json.loads(line) for line in lines]
    assert all(e["type"] == "emotion.estimate" and e["stream_id"] == "mic0" for e in events)
    assert all(e["label"] == "angry" and e["scores"]["angry"] == 0.7 for e in events)
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3


async def test_human_format_with_stream_filter() -> None:
    def tick(i: int) -> list[dict[str, Any]]:
        return [
            estimate("mic0", i, "sad"),
            StreamStatus("mic1", "speech", i * 500, {"windows": i, "inferred": i}).to_dict(),
            EmotionTransition("mic1", i, i * 500, "neutral", "angry", 0.66).to_dict(),
            Alert("mic1", "sustained_anger", "warning", "angry for 10 s", i * 500).to_dict(),
            EmotionUtterance(
                "mic1",
                i,
                i * 500,
                i * 500 + 2300,
                "happy",
                0.64,
                {"neutral": 0.2, "happy": 0.64, "angry": 0.1, "sad": 0.06},
                0.3,
                0.5,
                115,
                60,
                90.0,
                {"name": "dropformer", "frontend": "logmel80", "rev": "t"},
                quality=Quality(-20.0, 0.0, 6.5, 3200.0, True),
            ).to_dict(),
            estimate("mic1", i, "angry", 0.81),
        ]

    async with websocket_publisher(port=0) as pub, publishing(pub, tick):
        rc, out, err = await run_watch("--url", pub.url, "--stream", "mic1", "--count", "4")
    assert rc == 0, err
    lines = out.splitlines()
    assert "mic0" not in out and "sad" not in out
    estimates = [line for line in lines if "0.81" in line]
    assert len(estimates) == 4, out
    assert all(
        "mic1" in line and "angry" in line and "A+0.62" in line and "V-0.48" in line
        for line in estimates
    )
    assert any("neutral" in line and ("→ angry" in line or "-> angry" in line) for line in lines), (
        out
    )
    assert any("ALERT WARNING sustained_anger" in line for line in lines), out
    assert any(
        "== utterance happy" in line and "0.64" in line and "SNR 6 dB, telephone band" in line
        for line in lines
    ), out
    assert any("status SPEECH" in line for line in lines), out
    assert all(line.split()[1] == "mic1" for line in lines), out
    assert not [line for line in lines if line.startswith("{")], "human format printed JSON"


async def test_reconnects_until_the_daemon_comes_up() -> None:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "streamer.cli",
        "watch",
        "--url",
        f"ws://127.0.0.1:{port}/ws",
        "--count",
        "2",
        "--json",
        "--set",
        "backoff_max_s=0.5",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        seen = ""
        while "reconnecting" not in seen:  # at least one refused attempt, logged
            line = await asyncio.wait_for(proc.stderr.readline(), HANG_GUARD_S)
            assert line, f"watch exited early; stderr:\n{seen}"
            seen += line.decode()
        assert "cannot watch" in seen and str(port) in seen
        async with (
            websocket_publisher(port=port) as pub,
            publishing(pub, lambda i: [estimate("mic0", i, "happy")]),
        ):
            out, _ = await asyncio.wait_for(proc.communicate(), HANG_GUARD_S)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0
    assert [json.loads(x)["label"] for x in out.decode().splitlines()] == ["happy", "happy"]


@pytest.mark.parametrize(
    "url, expect",
    [
        ("closed-port", "cannot watch ws://127.0.0.1:{port}/ws"),
        ("http://127.0.0.1:{port}/ws", "url: must be a WebSocket URL"),
    ],
)
async def test_bad_url_is_a_clear_error(url: str, expect: str) -> None:
    port = free_port()
    target = f"ws://127.0.0.1:{port}/ws" if url == "closed-port" else url.format(port=port)
    rc, out, err = await run_watch("--url", target, "--once")
    assert rc == 2
    assert out == ""
    assert expect.format(port=port) in err
    assert "Traceback" not in err


async def test_wrong_path_names_the_http_status() -> None:
    async with websocket_publisher(port=0) as pub:
        rc, _, err = await run_watch("--url", f"ws://127.0.0.1:{pub.port}/nope", "--once")
    assert rc == 2
    assert "HTTP 404" in err and "/ws" in err


async def test_a_monitor_with_a_token() -> None:
    from streamer.access import AccessPolicy

    token = "watch-token-0123456789"
    async with (
        websocket_publisher(port=0, access=AccessPolicy(token=token)) as pub,
        publishing(pub, lambda i: [estimate("mic0", i, "happy")]),
    ):
        rc, _, err = await run_watch("--url", pub.url, "--once")
        assert rc == 2 and "refused with HTTP 401" in err and "token" in err
        rc, out, err = await run_watch("--url", pub.url, "--token", token, "--count", "2", "--json")
        assert rc == 0, err
    assert [json.loads(x)["label"] for x in out.splitlines()] == ["happy", "happy"]
