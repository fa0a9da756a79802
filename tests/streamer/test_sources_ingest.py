"""/ingest against the real daemon over real sockets with real speech: every
encoding, the same audio as s16le and float32, bad input isolated per session,
auth, limits, and 200 sessions that leave nothing behind."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import gc
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from streamer.core.codecs import encode
from tests.fixtures.network import at_8k, at_rate, daemon_config, ingest_session, running, speech

SPEECH = speech("03a01Wa.wav", "03a01Fa.wav")  # about 3.8 s, one speaker


async def test_each_encoding_and_s16_equals_f32() -> None:
    # A model without per-stream normalisation: at 10x real time a stream-normalised model
    # normalises a window with the statistics known when it is requested, which depends on how
    # far the worker lags (by design, live); this test is about the encodings only.
    logmel = Path(__file__).parents[2] / "dropformer" / "pretrained" / "emodb_logmel"
    async with running(daemon_config(logmel)) as (daemon, tap, url):
        s16 = await ingest_session(url, "enc.s16", SPEECH, encoding="pcm_s16le")
        f32 = await ingest_session(url, "enc.f32", SPEECH, encoding="pcm_f32le")
        mulaw = await ingest_session(
            url, "enc.mulaw", at_8k(SPEECH), encoding="mulaw", rate_hz=8000
        )
        at_48k = at_rate(SPEECH, 48000)
        stereo = np.stack([at_48k, 0.5 * at_48k], axis=1)
        f32_48k = await ingest_session(url, "enc.f32x2", stereo, encoding="pcm_f32le", rate_hz=48000,
                                       frame_ms=50, channels=2)  # fmt: skip
    for sid, result in (
        ("enc.s16", s16),
        ("enc.f32", f32),
        ("enc.mulaw", mulaw),
        ("enc.f32x2", f32_48k),
    ):
        assert result["close_code"] == 1000, result
        [stopped] = result["replies"]
        assert stopped["type"] == "stopped" and stopped["stream_id"] == sid
        assert stopped["counters"]["inferred"] == len(tap.estimates(sid)) >= 3
        assert stopped["counters"]["dropped_frames"] == 0 and stopped["session"]["errors"] == {}
        assert tap.final_status(sid)["state"] == "offline"
    a, b = tap.estimates("enc.s16"), tap.estimates("enc.f32")
    assert [(e["seq"], e["audio_start_ms"], e["audio_end_ms"]) for e in a] == [
        (e["seq"], e["audio_start_ms"], e["audio_end_ms"]) for e in b
    ]
    for x, y in zip(a, b):
        for label in x["raw"]:
            assert x["raw"][label] == pytest.approx(y["raw"][label], abs=2e-3)
        assert x["label"] == y["label"]
    # 8 kHz mu-law, 48 kHz stereo: resampled to the same 16 kHz timeline
    assert len(tap.estimates("enc.mulaw")) == len(a) == len(tap.estimates("enc.f32x2"))
    # nothing of the ended sessions is left in the daemon
    assert daemon.cores == {} and daemon.hub.snapshot()["streams"] == []
    assert daemon.health()["ended_streams"]["streams"] == 4


async def test_bad_input_gets_its_documented_outcome_and_others_carry_on() -> None:
    cfg = daemon_config(
        ingest={"start_timeout_s": 1.0, "max_frame_bytes": 8192, "max_speed": 3.0, "burst_s": 2.0}
    )
    async with running(cfg) as (daemon, tap, url):
        good_audio = speech("03a01Wa.wav", "03a01Fa.wav", "03a02Ta.wav")
        good = asyncio.create_task(ingest_session(url, "good", good_audio, speed=2.0))
        await tap.wait(lambda: tap.of("stream.status", "good"))

        async def session(
            first: list[str | bytes], *, start: bool = True
        ) -> tuple[list[dict[str, Any]], int | None, str | None]:
            async with connect(f"{url}/ingest") as ws:
                if start:
                    await ws.send(
                        json.dumps(
                            {
                                "type": "start",
                                "stream_id": f"bad{id(first)}",
                                "sample_rate_hz": 16000,
                                "encoding": "pcm_s16le",
                            }
                        )
                    )
                    assert json.loads(await ws.recv())["type"] == "started"
                got = []
                with contextlib.suppress(ConnectionClosed):  # the server may close while we send
                    for m in first:
                        await ws.send(m)
                    async with asyncio.timeout(10):
                        async for m in ws:
                            got.append(json.loads(m))
                with contextlib.suppress(ConnectionClosed):
                    async with asyncio.timeout(10):
                        while True:
                            got.append(json.loads(await ws.recv()))
                return got, ws.close_code, ws.close_reason

        one_second = encode(SPEECH[:16000], "pcm_s16le")
        results = await asyncio.gather(
            session(["{this is not json"], start=False),
            session(
                [
                    json.dumps(
                        {
                            "type": "start",
                            "stream_id": "x",
                            "sample_rate_hz": 16000,
                            "encoding": "opus",
                        }
                    )
                ],
                start=False,
            ),
            session(
                [
                    json.dumps(
                        {
                            "type": "start",
                            "stream_id": "good",
                            "sample_rate_hz": 16000,
                            "encoding": "pcm_s16le",
                        }
                    )
                ],
                start=False,
            ),
            session([b"\x00" * 10000]),  # oversized frame
            session(
                [one_second[i : i + 3200] for i in range(0, len(one_second), 3200)] * 8
            ),  # 8 s at once
            session([], start=False),  # connects, never starts
            session(
                [
                    b"\x00\x01\x02",
                    b"\x00" * 320,
                    "{bad",
                    json.dumps({"type": "pause"}),
                    json.dumps({"type": "stop"}),
                ]
            ),
        )
        (bad_json, opus, in_use, big, flood, idle, odd) = results
        assert (
            bad_json[1] == 4400
            and bad_json[0][0]["code"] == "bad_start"
            and bad_json[0][0]["fatal"] is True
        )
        assert opus[1] == 4415 and "opus" in opus[0][0]["message"]
        assert in_use[1] == 4409 and in_use[0][0]["code"] == "stream_in_use"
        assert big[1] == 1009 and big[0][0]["code"] == "too_large"
        assert flood[1] == 4429 and flood[0][-1]["code"] == "too_fast"
        assert idle[1] == 4408 and idle[0][0]["code"] == "start_timeout"
        # non-fatal: reported, counted, the session goes on to a normal stop
        codes = [m.get("code") for m in odd[0]]
        assert codes == ["odd_length", "bad_message", "unknown_type", None] and odd[1] == 1000
        stopped = odd[0][-1]
        assert stopped["type"] == "stopped" and stopped["counters"]["dropped_frames"] == 1
        assert stopped["session"]["errors"] == {
            "odd_length": 1,
            "bad_message": 1,
            "unknown_type": 1,
        }

        # a client that vanishes mid-call: its stream goes offline and is released
        ws = await connect(f"{url}/ingest")
        await ws.send(
            json.dumps(
                {
                    "type": "start",
                    "stream_id": "vanish",
                    "sample_rate_hz": 16000,
                    "encoding": "pcm_s16le",
                }
            )
        )
        await ws.recv()
        for i in range(0, 32000, 3200):
            await ws.send(one_second[i : i + 3200])
        await tap.wait(lambda: tap.of("stream.status", "vanish"))
        ws.transport.abort()  # no close handshake, like a dropped connection
        await tap.wait(lambda: tap.of("stream.status", "vanish")[-1]["state"] == "offline", 10)
        await tap.wait(lambda: "vanish" not in daemon.cores, 10)

        # clients that start and vanish at once (the server may be sending "started"):
        # every stream is still ended and released
        for i in range(20):
            ws = await connect(f"{url}/ingest")
            await ws.send(
                json.dumps(
                    {
                        "type": "start",
                        "stream_id": f"gone{i}",
                        "sample_rate_hz": 16000,
                        "encoding": "mulaw",
                    }
                )
            )
            await ws.send(one_second[:1600])
            ws.transport.abort()
        await tap.wait(lambda: all(tap.of("stream.status", f"gone{i}") for i in range(20)), 10)
        await tap.wait(lambda: set(daemon.cores) <= {"good"}, 10)
        assert all(tap.final_status(f"gone{i}")["state"] == "offline" for i in range(20))

        result = await good
        assert good.done() and result["close_code"] == 1000
        final = result["replies"][-1]["counters"]
        assert (
            final["inferred"] >= 4 and final["dropped_frames"] == 0 and final["skipped_stale"] == 0
        )
        net = daemon.health()["network"]
        assert net["closed"] == {"bad_start": 1, "unsupported_format": 1, "stream_in_use": 1, "too_large": 1,
                                 "too_fast": 1, "start_timeout": 1}  # fmt: skip
        assert (
            net["errors"] == {"odd_length": 1, "bad_message": 1, "unknown_type": 1}
            and net["active"] == 0
        )
    assert all(tap.final_status(s)["state"] == "offline" for s in ("good", "vanish"))


async def test_token_and_origin() -> None:
    token = "s3cret-token-0123456789"
    audio = SPEECH[:24000]
    async with running(daemon_config(access={"token": token})) as (daemon, tap, url):
        for query, headers in (
            ("", {}),
            ("?token=wrong-token-0123456789", {}),
            ("", {"Authorization": "Bearer nope"}),
        ):
            async with connect(f"{url}/ingest{query}", additional_headers=headers) as ws:
                reply = json.loads(await ws.recv())
                await ws.wait_closed()
            assert ws.close_code == 4401 and reply["code"] == "unauthorized"
        ok_query = await ingest_session(url, "tok.q", audio, query=f"?token={token}")
        assert ok_query["close_code"] == 1000
        # a page from another origin is refused at the handshake, token or not
        with pytest.raises(InvalidStatus) as refused:
            async with connect(f"{url}/ingest", additional_headers={"Authorization": f"Bearer {token}"},
                               origin="http://evil.example"):  # fmt: skip
                pass
        assert refused.value.response.status_code == 403
        async with connect(
            f"{url}/ingest", subprotocols=["emotion-monitor", f"bearer.{token}"]
        ) as ws:
            await ws.send(
                json.dumps(
                    {
                        "type": "start",
                        "stream_id": "tok.h",
                        "sample_rate_hz": 16000,
                        "encoding": "mulaw",
                    }
                )
            )
            assert json.loads(await ws.recv())["type"] == "started"
        assert daemon.health()["network"]["closed"] == {"unauthorized": 3}
    async with running(daemon_config()) as (daemon, tap, url):
        # no token: a page from another origin may not feed audio; the dashboard's own origin may
        with pytest.raises(InvalidStatus) as refused:
            async with connect(f"{url}/ingest", origin="http://evil.example"):
                pass
        assert refused.value.response.status_code == 403
        host = url.removeprefix("ws://")
        async with connect(f"{url}/ingest", origin=f"http://{host}") as ws:
            await ws.send(
                json.dumps(
                    {
                        "type": "start",
                        "stream_id": "same",
                        "sample_rate_hz": 16000,
                        "encoding": "mulaw",
                    }
                )
            )
            assert json.loads(await ws.recv())["type"] == "started"
        # plain HTTP on the ingest path is not served as a file
        with pytest.raises(InvalidStatus):
            async with connect(f"{url}/nope"):
                pass


async def test_session_limit() -> None:
    async with running(daemon_config(ingest={"max_sessions": 2})) as (daemon, tap, url):
        held = [await connect(f"{url}/ingest") for _ in range(2)]
        async with connect(f"{url}/ingest") as third:
            reply = json.loads(await third.recv())
            await third.wait_closed()
        assert third.close_code == 1013 and reply["code"] == "busy"
        for ws in held:
            await ws.close()
        await asyncio.sleep(0.2)
        result = await ingest_session(url, "after", SPEECH[:16000])
        assert result["close_code"] == 1000
        assert daemon.health()["network"]["refused"] == 1


@pytest.mark.timeout(240)
async def test_200_sessions_leave_nothing_behind(tmp_path: Path) -> None:
    audio = SPEECH[:12000]  # 0.75 s: one early window per session
    async with running(daemon_config(ingest={"max_speed": 50.0})) as (daemon, tap, url):

        async def one(i: int) -> None:
            r = await ingest_session(url, f"loop{i % 7}", audio, speed=50.0, frame_ms=250,
                                     metadata={"call_id": f"c{i}", "role": "caller"})  # fmt: skip
            assert r["close_code"] == 1000 and r["replies"][-1]["counters"]["inferred"] == 1

        def census() -> Counter[str]:
            tap.events.clear()  # the test's own record of events is not the daemon's
            gc.collect()
            for o in gc.get_objects():  # isinstance caches of ABCs (weak references to classes)
                if issubclass(type(o), abc.ABCMeta):  # grow when another test imported more (Ray)
                    o._abc_caches_clear()
            gc.collect()
            return Counter(type(o).__name__ for o in gc.get_objects())

        for i in range(20):  # warm-up: caches, lazy imports
            await one(i)
        logging.disable(logging.INFO)  # pytest keeps every log record it captures
        try:
            before = census()
            for i in range(200):
                await one(i)
            after = census()
        finally:
            logging.disable(logging.NOTSET)
        grown = after - before
        health = daemon.health()
        assert daemon.cores == {} and daemon._locks == {} and daemon._network_tasks == {}
        assert daemon.sources == {} and all(
            not p.stats.lost_by_stream for _, p in daemon.hub.publishers
        )
        assert daemon.hub.snapshot() == {"streams": [], "last_status": {}, "last_estimate": {},
                                         "last_importance": {}, "transitions": {},
                                         "utterances": {}}  # fmt: skip
        assert health["network"]["active"] == 0 and health["ended_streams"]["streams"] == 220
        assert health["ended_streams"]["inferred"] == 220
        assert sum(grown.values()) < 300, (
            f"more live objects after 200 sessions: {grown.most_common(10)}"
        )
        tap.events.clear()
