"""The /ingest protocol state machine with plain inputs: every rule, no sockets."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from streamer.core.codecs import encode
from streamer.core.ingest import (
    CLOSE_BAD_START,
    CLOSE_FORBIDDEN,
    CLOSE_POLICY,
    CLOSE_TOO_BIG,
    CLOSE_TOO_FAST,
    CLOSE_UNSUPPORTED_FORMAT,
    Audio,
    IngestLimits,
    IngestProtocol,
    Problem,
    RateLimiter,
    Start,
    Stop,
)


def start_msg(**over: Any) -> str:
    msg = {
        "type": "start",
        "stream_id": "call7.caller",
        "sample_rate_hz": 16000,
        "encoding": "pcm_s16le",
    }
    msg.update(over)
    return json.dumps({k: v for k, v in msg.items() if v is not None})


def started(limits: IngestLimits | None = None, **over: Any) -> IngestProtocol:
    p = IngestProtocol("s1", limits)
    out = p.receive_text(start_msg(**over), 0.0)
    assert len(out) == 1 and isinstance(out[0], Start), out
    return p


def only_problem(out: list[Any]) -> Problem:
    assert len(out) == 1 and isinstance(out[0], Problem), out
    return out[0]


def test_start_then_audio_then_stop() -> None:
    p = IngestProtocol("s1")
    [start] = p.receive_text(
        start_msg(channels=2, metadata={"call_id": "c-1", "role": "caller"}), 0.0
    )
    assert isinstance(start, Start)
    assert (start.stream_id, start.format.channels, start.role) == ("call7.caller", 2, "caller")
    reply = start.started_message(p.limits)
    assert (
        reply["type"] == "started"
        and reply["session_id"] == "s1"
        and reply["limits"]["max_frame_bytes"] == 65536
    )
    pcm = np.zeros((160, 2), np.float32)
    [audio] = p.receive_bytes(encode(pcm, "pcm_s16le"), 0.01)
    assert isinstance(audio, Audio) and audio.samples.shape == (160, 2)
    assert p.receive_text('{"type": "stop"}', 0.02) == [Stop()]
    assert p.state == "ended" and p.receive_bytes(b"\x00\x00", 0.03) == []  # nothing after stop
    assert p.summary()["audio_ms"] == 10


@pytest.mark.parametrize(
    ("message", "code", "close"),
    [
        ("{not json", "bad_start", CLOSE_BAD_START),
        ("[1, 2]", "bad_start", CLOSE_BAD_START),
        ('{"type": "hello"}', "bad_start", CLOSE_BAD_START),
        (start_msg(stream_id="a/b"), "bad_start", CLOSE_BAD_START),
        (start_msg(sample_rate_hz="16000"), "bad_start", CLOSE_BAD_START),
        (start_msg(sample_rate_hz=None), "bad_start", CLOSE_BAD_START),
        (start_msg(extra=1), "bad_start", CLOSE_BAD_START),
        (start_msg(v=2), "bad_start", CLOSE_BAD_START),
        (start_msg(metadata={"role": 5}), "bad_start", CLOSE_BAD_START),
        (start_msg(encoding="opus"), "unsupported_format", CLOSE_UNSUPPORTED_FORMAT),
        (start_msg(sample_rate_hz=4000), "unsupported_format", CLOSE_UNSUPPORTED_FORMAT),
        (start_msg(channels=9), "unsupported_format", CLOSE_UNSUPPORTED_FORMAT),
        (
            start_msg(sample_rate_hz=192000, channels=8, encoding="pcm_f32le"),
            "unsupported_format",
            CLOSE_UNSUPPORTED_FORMAT,
        ),
        (start_msg(metadata={"role": "agent"}), "forbidden", CLOSE_FORBIDDEN),
        ("x" * 5000, "too_large", CLOSE_TOO_BIG),
    ],
)
def test_a_bad_start_is_fatal_with_its_close_code(message: str, code: str, close: int) -> None:
    p = IngestProtocol("s1")
    problem = only_problem(p.receive_text(message, 0.0))
    assert (problem.code, problem.fatal, problem.close_code) == (code, True, close)
    assert p.state == "ended" and problem.to_message()["fatal"] is True


def test_agent_sessions_need_analyse_agent() -> None:
    started(IngestLimits(analyse_agent=True), metadata={"role": "agent"})


def test_non_fatal_problems_are_counted_and_the_session_goes_on() -> None:
    p = IngestProtocol("s1")
    assert only_problem(p.receive_bytes(b"\x00\x00", 0.0)).code == "not_started"
    assert p.state == "new"
    assert isinstance(p.receive_text(start_msg(), 0.0)[0], Start)
    for message, code in (
        ("{oops", "bad_message"),
        ('"text"', "bad_message"),
        ('{"type": "pause"}', "unknown_type"),
        (start_msg(), "already_started"),
    ):
        problem = only_problem(p.receive_text(message, 0.1))
        assert problem.code == code and not problem.fatal and problem.close_code is None
    odd = only_problem(p.receive_bytes(b"\x00\x00\x00", 0.1))
    assert odd.code == "odd_length" and not odd.fatal
    assert only_problem(p.receive_bytes(b"", 0.1)).code == "empty_frame"
    assert isinstance(p.receive_bytes(b"\x00\x00" * 10, 0.2)[0], Audio)
    s = p.summary()
    assert s["dropped_frames"] == 1 and s["frames"] == 1
    assert s["errors"] == {
        "not_started": 1,
        "bad_message": 2,
        "unknown_type": 1,
        "already_started": 1,
        "odd_length": 1,
        "empty_frame": 1,
    }


def test_too_many_errors_closes_the_session() -> None:
    p = started(IngestLimits(max_errors=3))
    for _ in range(3):
        assert not only_problem(p.receive_bytes(b"\x00", 0.0)).fatal
    last = only_problem(p.receive_bytes(b"\x00", 0.0))
    assert last.code == "too_many_errors" and last.close_code == CLOSE_POLICY


def test_oversized_frame_is_fatal() -> None:
    p = started(IngestLimits(max_frame_bytes=1000))
    assert isinstance(p.receive_bytes(b"\x00" * 1000, 0.0)[0], Audio)
    problem = only_problem(p.receive_bytes(b"\x00" * 1002, 0.0))
    assert problem.code == "too_large" and problem.close_code == CLOSE_TOO_BIG


def test_real_time_passes_a_flood_is_fatal() -> None:
    limits = IngestLimits(max_speed=1.5, burst_s=2.0)
    p = started(limits)
    frame = b"\x00\x00" * 1600  # 100 ms at 16 kHz s16le
    t = 0.0
    for _ in range(600):  # a minute in real time, with jitter
        t += 0.1
        out = p.receive_bytes(frame, t + (0.05 if int(t * 10) % 7 == 0 else 0.0))
        assert isinstance(out[0], Audio)
    # a stall, then the backlog at once: fine up to the burst
    out = p.receive_bytes(frame * 10, t + 1.2)
    assert isinstance(out[0], Audio)
    flood = started(limits)
    for i in range(100):
        out = flood.receive_bytes(frame, i * 0.001)  # 100x real time
        if isinstance(out[0], Problem):
            break
    assert out[0].code == "too_fast" and out[0].close_code == CLOSE_TOO_FAST
    assert 20 <= i <= 22  # the 2 s burst (20 frames) plus what refilled meanwhile


def test_rate_limiter_refills_and_caps() -> None:
    r = RateLimiter(speed=1.0, burst_s=1.0)
    assert r.allow(1.0, 0.0) and not r.allow(0.1, 0.0)
    assert r.allow(0.5, 0.5) and not r.allow(0.1, 0.5)
    assert r.allow(1.0, 100.0) and not r.allow(0.01, 100.0)  # capped at the burst


def test_control_size_is_checked_before_parsing() -> None:
    p = started(IngestLimits(max_control_bytes=300))
    # deeply nested JSON would be expensive or raise RecursionError: never parsed
    problem = only_problem(p.receive_text("[" * 100000, 0.0))
    assert problem.code == "too_large" and problem.fatal
    p = started()
    assert only_problem(p.receive_text("[" * 4000, 0.0)).code == "bad_message"
