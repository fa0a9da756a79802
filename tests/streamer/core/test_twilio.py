"""Twilio Media Streams state machine with plain messages."""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np

from streamer.core.codecs import encode
from streamer.core.ingest import (
    CLOSE_BAD_START,
    CLOSE_TOO_FAST,
    CLOSE_UNSUPPORTED_FORMAT,
    IngestLimits,
    Problem,
)
from streamer.core.twilio import CallStart, CallStop, TrackAudio, TrackNames, TwilioProtocol

CALL = "CA" + "0123456789abcdef" * 2
STREAM = "MZ" + "fedcba9876543210" * 2


def start(tracks: list[str] | None = None, **fmt: Any) -> str:
    media_format = {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1, **fmt}
    return json.dumps({
        "event": "start", "sequenceNumber": "1", "streamSid": STREAM,
        "start": {"accountSid": "AC" + "1" * 32, "streamSid": STREAM, "callSid": CALL,
                  "tracks": tracks or ["inbound", "outbound"], "customParameters": {"token": "t"},
                  "mediaFormat": media_format},
    })  # fmt: skip


def media(track: str, payload: str | None = None, seq: int = 2) -> str:
    if payload is None:
        payload = base64.b64encode(encode(np.zeros(160, np.float32), "mulaw")).decode()
    return json.dumps({"event": "media", "sequenceNumber": str(seq), "streamSid": STREAM,
                       "media": {"track": track, "chunk": "1", "timestamp": "20", "payload": payload}})  # fmt: skip


def test_caller_only_by_default() -> None:
    p = TwilioProtocol()
    assert (
        p.receive_text(
            json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}), 0
        )
        == []
    )
    [s] = p.receive_text(start(), 0)
    assert isinstance(s, CallStart)
    assert s.streams == {"inbound": f"{CALL}.caller"} and s.roles == {"inbound": "caller"}
    assert s.custom_parameters == {"token": "t"} and s.sample_rate_hz == 8000
    [a] = p.receive_text(media("inbound"), 0.02)
    assert (
        isinstance(a, TrackAudio) and a.stream_id == f"{CALL}.caller" and a.samples.shape == (160,)
    )
    assert p.receive_text(media("outbound"), 0.02) == []  # the agent is not analysed, not an error
    assert p.ignored["outbound"] == 1 and not p.errors.by_code
    assert (
        p.receive_text(
            json.dumps({"event": "mark", "streamSid": STREAM, "mark": {"name": "x"}}), 0.03
        )
        == []
    )
    assert p.receive_text(json.dumps({"event": "stop", "stop": {"callSid": CALL}}), 0.04) == [
        CallStop()
    ]
    assert p.state == "ended"


def test_agent_with_its_own_name_when_enabled() -> None:
    p = TwilioProtocol(names=TrackNames("customer", "bot", analyse_agent=True))
    [s] = p.receive_text(start(), 0)
    assert isinstance(s, CallStart)
    assert s.streams == {"inbound": f"{CALL}.customer", "outbound": f"{CALL}.bot"}
    [a] = p.receive_text(media("outbound"), 0.02)
    assert isinstance(a, TrackAudio) and a.stream_id == f"{CALL}.bot"


def test_non_fatal_problems_are_counted() -> None:
    p = TwilioProtocol()
    cases = [
        ("{broken", "bad_message"),
        (media("inbound"), "not_started"),
        (json.dumps({"event": "surprise"}), "unknown_event"),
    ]
    for msg, code in cases:
        [problem] = p.receive_text(msg, 0)
        assert isinstance(problem, Problem) and problem.code == code and not problem.fatal
    p.receive_text(start(["inbound"]), 0)
    for msg, code in [
        (media("outbound"), "unknown_track"),  # not announced in start.tracks
        (media("both"), "unknown_track"),
        (media("inbound", "***not base64***"), "bad_payload"),
        (media("inbound", ""), "empty_frame"),
    ]:
        [problem] = p.receive_text(msg, 0.1)
        assert isinstance(problem, Problem) and problem.code == code and not problem.fatal, msg
    [problem] = p.receive_bytes(b"\x00", 0.1)
    assert isinstance(problem, Problem) and problem.code == "bad_message"
    assert isinstance(p.receive_text(media("inbound"), 0.2)[0], TrackAudio)
    assert p.dropped["inbound"] == 1 and p.media["inbound"] == 1


def test_bad_starts_and_floods_are_fatal() -> None:
    for msg, close in [
        (start(encoding="audio/l16"), CLOSE_UNSUPPORTED_FORMAT),
        (start(sampleRate=4000), CLOSE_UNSUPPORTED_FORMAT),
        (start(["inbound", "inbound"]), CLOSE_BAD_START),
        (json.dumps({"event": "start", "start": {"callSid": "CA/../x"}}), CLOSE_BAD_START),
    ]:
        [problem] = TwilioProtocol().receive_text(msg, 0)
        assert isinstance(problem, Problem) and problem.fatal and problem.close_code == close
    p = TwilioProtocol(IngestLimits(max_speed=1.5, burst_s=1.0))
    p.receive_text(start(), 0)
    out: list[Any] = []
    for i in range(200):  # 20 ms chunks at 20x real time
        out = p.receive_text(media("inbound", seq=i), i * 0.001)
        if isinstance(out[0], Problem):
            break
    assert out[0].code == "too_fast" and out[0].close_code == CLOSE_TOO_FAST and 50 <= i <= 53


def test_each_track_is_rate_limited_on_its_own() -> None:
    p = TwilioProtocol(IngestLimits(max_speed=1.2, burst_s=0.5), TrackNames(analyse_agent=True))
    p.receive_text(start(), 0)
    for i in range(500):  # 10 s of a two-track call in real time
        t = i * 0.02
        assert isinstance(p.receive_text(media("inbound", seq=2 * i), t)[0], TrackAudio)
        assert isinstance(p.receive_text(media("outbound", seq=2 * i + 1), t)[0], TrackAudio)
