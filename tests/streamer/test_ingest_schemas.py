"""docs/schemas: every /ingest control message has a JSON Schema, the server
accepts what the start schema accepts (and refuses what it refuses), and every
message the server sends validates against its schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
from websockets.asyncio.client import connect

from streamer.core.codecs import encode
from streamer.core.ingest import FATAL, NON_FATAL, IngestLimits, ProtocolError, parse_start
from tests.fixtures.network import daemon_config, running, speech

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"


def schema(name: str) -> jsonschema.Draft202012Validator:
    doc = json.loads((SCHEMAS / f"ingest-{name}.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(doc)
    return jsonschema.Draft202012Validator(doc)


VALID_STARTS: list[dict[str, Any]] = [
    *json.loads((SCHEMAS / "ingest-start.schema.json").read_text())["examples"],
    {
        "type": "start",
        "stream_id": "a",
        "sample_rate_hz": 192000,
        "encoding": "pcm_f32le",
        "channels": 2,
    },
    {
        "type": "start",
        "stream_id": "x" * 128,
        "sample_rate_hz": 8000,
        "encoding": "mulaw",
        "metadata": {},
    },
]
INVALID_STARTS: list[dict[str, Any]] = [
    {"type": "start", "stream_id": "a b", "sample_rate_hz": 16000, "encoding": "pcm_s16le"},
    {"type": "start", "stream_id": "x" * 129, "sample_rate_hz": 16000, "encoding": "pcm_s16le"},
    {"type": "start", "stream_id": "a", "sample_rate_hz": 16000.5, "encoding": "pcm_s16le"},
    {"type": "start", "stream_id": "a", "sample_rate_hz": 7999, "encoding": "pcm_s16le"},
    {"type": "start", "stream_id": "a", "sample_rate_hz": 16000, "encoding": "opus"},
    {
        "type": "start",
        "stream_id": "a",
        "sample_rate_hz": 16000,
        "encoding": "mulaw",
        "channels": 0,
    },
    {"type": "start", "stream_id": "a", "sample_rate_hz": 16000, "encoding": "mulaw", "v": 2},
    {
        "type": "start",
        "stream_id": "a",
        "sample_rate_hz": 16000,
        "encoding": "mulaw",
        "extra": True,
    },
    {
        "type": "start",
        "stream_id": "a",
        "sample_rate_hz": 16000,
        "encoding": "mulaw",
        "metadata": {"role": 1},
    },
    {
        "type": "start",
        "stream_id": "a",
        "sample_rate_hz": 16000,
        "encoding": "mulaw",
        "metadata": {"a b": "x"},
    },
    {"type": "start", "sample_rate_hz": 16000, "encoding": "mulaw"},
]


@pytest.mark.parametrize("msg", VALID_STARTS)
def test_what_the_schema_accepts_the_server_accepts(msg: dict[str, Any]) -> None:
    schema("start").validate(msg)
    parse_start(msg, "s", IngestLimits(max_bytes_per_s=10**7))


@pytest.mark.parametrize("msg", INVALID_STARTS)
def test_what_the_schema_refuses_the_server_refuses(msg: dict[str, Any]) -> None:
    assert not schema("start").is_valid(msg)
    with pytest.raises(ProtocolError) as err:
        parse_start(msg, "s", IngestLimits(max_bytes_per_s=10**7))
    assert err.value.fatal


def test_error_codes_are_all_in_the_schema_and_the_docs() -> None:
    codes = schema("error").schema["properties"]["code"]["enum"]
    ours = {
        c
        for c in (*FATAL, *NON_FATAL)
        if c not in ("bad_payload", "unknown_track", "unknown_event")
    }
    assert set(codes) == ours  # the three Twilio-only codes are never sent (Twilio reads nothing)
    docs = (SCHEMAS.parent / "ingest.md").read_text()
    for code in codes:
        assert f"`{code}`" in docs
    for code, close in FATAL.items():
        assert str(close) in docs, code
    schema("stop").validate({"type": "stop"})


async def test_every_server_message_validates() -> None:
    audio = speech("03a01Nc.wav")
    async with running(daemon_config()) as (daemon, tap, url):
        async with connect(f"{url}/ingest") as ws:
            await ws.send(json.dumps(VALID_STARTS[0]))
            got = [json.loads(await ws.recv())]
            await ws.send("{oops")
            got.append(json.loads(await ws.recv()))
            await ws.send(encode(audio[::2], "mulaw"))
            await ws.send(json.dumps({"type": "stop"}))
            got += [json.loads(m) async for m in ws]
        async with connect(f"{url}/ingest") as ws:
            await ws.send(
                json.dumps(
                    {"type": "start", "stream_id": "s", "sample_rate_hz": 16000, "encoding": "opus"}
                )
            )
            got.append(json.loads(await ws.recv()))
    kinds = [m["type"] for m in got]
    assert kinds == ["started", "error", "stopped", "error"]
    for m in got:
        schema(m["type"]).validate(m)
    assert got[-1]["fatal"] is True and got[1]["fatal"] is False
    assert np.isclose(got[2]["session"]["audio_ms"], 1000 * len(audio[::2]) / 8000, atol=1)
