"""``POST /v1/analyze`` on a real daemon with a real HTTP client: answers on real EmoDB
speech, the token, the size and type checks, the concurrency limit, and live streams that
keep publishing while an upload is analysed."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
import soundfile as sf
import yaml
from websockets.sync.client import connect

from dropformer.configio import validate
from streamer.config import DaemonConfig, demo_audio_path
from streamer.core.events import validate_event
from streamer.daemon import Daemon

ROOT = Path(__file__).resolve().parents[2]
EMODB = ROOT / "tests" / "data" / "emodb"
TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_UPLOAD = 4_000_000


class Running:
    """A daemon on its own thread and event loop, as a server runs."""

    def __init__(self, cfg: DaemonConfig) -> None:
        self.cfg = cfg
        self.port = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        async def main() -> None:
            self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
            async with Daemon(self.cfg) as daemon:
                self.port = daemon.websocket.port
                self._ready.set()
                await daemon.run(self._stop)

        try:
            asyncio.run(main())
        except BaseException as exc:
            self.error = exc
            self._ready.set()

    def __enter__(self) -> Running:
        self.thread.start()
        assert self._ready.wait(60) and self.error is None, self.error
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(30)


@pytest.fixture(scope="module")
def daemon(tiny_checkpoint: Path) -> Iterator[Running]:
    raw = {
        "model": {"checkpoint": str(tiny_checkpoint)},
        # a live stream, paced like a microphone, that must keep publishing during analyses
        "streams": [{"id": "live", "source": {"path": str(demo_audio_path()), "loop": True}}],
        "windowing": {"hop_s": 0.25},
        "gate": {"kind": "none"},
        "publish": {"websocket": {"port": 0, "importance": False}},
        "access": {"token": TOKEN},
        "api": {"max_upload_bytes": MAX_UPLOAD},
        "status_interval_s": None,
    }
    with Running(validate(DaemonConfig, raw)) as running:
        yield running


def post(
    port: int, body: bytes, headers: dict[str, str], query: str = ""
) -> tuple[int, dict[str, str], Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", f"/v1/analyze{query}", body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, dict(resp.getheaders()), json.loads(data)
    finally:
        conn.close()


def test_an_emodb_recording_is_analysed(daemon: Running) -> None:
    wav = (EMODB / "03a01Wa.wav").read_bytes()
    status, headers, doc = post(
        daemon.port, wav, {**AUTH, "Content-Type": "audio/wav"}, "?timeline=true&name=call42"
    )
    assert status == 200, doc
    assert headers["Content-Type"] == "application/json" and headers["Connection"] == "close"
    summary = doc["summary"]
    assert summary["labels"] == ["neutral", "happy", "angry", "sad"] and "file" not in summary
    (stream,) = summary["streams"]
    assert stream["stream_id"] == "call42" and stream["speech_s"] > 1.0
    assert stream["dominant_label"] in summary["labels"]
    [utt] = doc["utterances"]  # one sentence: one utterance, the model run once on all of it
    assert utt["stream_id"] == "call42" and utt["label"] in summary["labels"]
    assert 0.0 <= utt["start_s"] < utt["end_s"] and stream["utterances"] == 1
    spec = yaml.safe_load((ROOT / "docs" / "openapi.yaml").read_text())
    answer = {"$ref": "#/components/schemas/Analysis", "components": spec["components"]}
    jsonschema.Draft202012Validator(answer).validate(doc)  # as docs/openapi.yaml describes it
    kinds = {e["type"] for e in doc["timeline"]}
    assert {"stream.status", "emotion.estimate"} <= kinds
    for event in doc["timeline"]:
        validate_event(event)
    status, _, doc = post(daemon.port, wav, {**AUTH, "Content-Type": "audio/wav"})
    assert status == 200 and "timeline" not in doc  # only when asked
    assert not list(Path(tempfile.gettempdir()).glob("emotion-monitor-upload-*"))  # nothing kept


def test_stereo_upload_separate_channels(daemon: Running, tmp_path: Path) -> None:
    a, _ = sf.read(EMODB / "03a01Wa.wav", dtype="int16")
    b, _ = sf.read(EMODB / "16a02Tc.wav", dtype="int16")
    n = min(a.size, b.size)
    sf.write(tmp_path / "c.flac", np.stack([a[:n], b[:n]], axis=1), 16000)
    body = (tmp_path / "c.flac").read_bytes()
    headers = {**AUTH, "Content-Type": "audio/flac"}
    status, _, doc = post(
        daemon.port, body, headers, "?channels=separate&channel_names=agent,customer"
    )
    assert status == 200, doc
    # one stream per channel; the agent's only with ingest.analyse_agent (AI Act Art. 5(1)(f))
    assert [s["stream_id"] for s in doc["summary"]["streams"]] == ["upload.customer"]
    status, _, doc = post(daemon.port, body, headers, "?channels=separate")
    assert [s["stream_id"] for s in doc["summary"]["streams"]] == ["upload.ch0", "upload.ch1"]
    status, _, doc = post(daemon.port, body, headers, "?channels=sideways")
    assert status == 400 and "channels" in doc["error"] and "'mix' or 'separate'" in doc["error"]


def test_refusals_name_the_problem(daemon: Running) -> None:
    wav = (EMODB / "03a01Wa.wav").read_bytes()
    status, headers, doc = post(daemon.port, wav, {"Content-Type": "audio/wav"})
    assert status == 401 and "token" in doc["error"] and headers["WWW-Authenticate"] == "Bearer"
    status, _, doc = post(daemon.port, wav, {"Authorization": "Bearer wrong-token-123456789"})
    assert status == 401
    status, _, doc = post(
        daemon.port, b"\0" * (MAX_UPLOAD + 1), {**AUTH, "Content-Type": "audio/wav"}
    )
    assert (
        status == 413
        and f"at most {MAX_UPLOAD} are accepted (api.max_upload_bytes)" in doc["error"]
    )
    status, _, doc = post(daemon.port, b'{"a": 1}', {**AUTH, "Content-Type": "application/json"})
    assert status == 415 and "'application/json' is not audio" in doc["error"]
    status, _, doc = post(
        daemon.port, b"hello, not a recording", {**AUTH, "Content-Type": "audio/wav"}
    )
    assert status == 415 and "the upload cannot be decoded" in doc["error"]
    assert "emotion-monitor-upload" not in doc["error"]  # no temporary path leaks
    status, _, doc = post(
        daemon.port, wav, {**AUTH, "Content-Type": "audio/wav", "Host": "evil.example"}
    )
    assert status == 403 and "access.allowed_hosts" in doc["error"]
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
    conn.request("GET", "/v1/analyze")
    resp = conn.getresponse()
    assert resp.status == 405 and resp.getheader("Allow") == "POST" and b"POST" in resp.read()
    conn.close()
    origin = {"Origin": "http://evil.example"}
    status, _, doc = post(daemon.port, wav, {**AUTH, "Content-Type": "audio/wav", **origin})
    assert status == 403 and "access.allowed_origins" in doc["error"]


def test_one_analysis_at_a_time(daemon: Running) -> None:
    # A first upload that sends its head and half its body holds the one slot.
    wav = (EMODB / "03a01Wa.wav").read_bytes()
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=30) as slow:
        slow.sendall(
            (
                f"POST /v1/analyze HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
                f"Content-Type: audio/wav\r\nContent-Length: {len(wav)}\r\n\r\n"
            ).encode()
            + wav[: len(wav) // 2]
        )
        time.sleep(0.3)
        status, headers, doc = post(daemon.port, wav, {**AUTH, "Content-Type": "audio/wav"})
        assert (
            status == 429 and headers["Retry-After"] == "5" and "api.max_concurrent" in doc["error"]
        )
        slow.sendall(wav[len(wav) // 2 :])
        answer = b""
        while chunk := slow.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 OK")


def test_live_streams_keep_publishing_during_an_analysis(daemon: Running, tmp_path: Path) -> None:
    speech = [
        sf.read(EMODB / n, dtype="int16")[0] for n in sorted(p.name for p in EMODB.glob("*.wav"))
    ]
    long = tmp_path / "long.wav"  # about 48 s of speech: 190 windows at a hop of 0.25 s
    sf.write(long, np.concatenate(speech * 2), 16000, subtype="PCM_16")
    arrivals: list[float] = []
    done = threading.Event()

    def listen() -> None:
        with connect(
            f"ws://127.0.0.1:{daemon.port}/ws?streams=live", additional_headers=AUTH
        ) as ws:
            while not done.is_set():
                try:
                    event = json.loads(ws.recv(timeout=0.5))
                except TimeoutError:
                    continue
                if event.get("type") == "emotion.estimate":
                    arrivals.append(time.monotonic())

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    time.sleep(1.5)
    t0 = time.monotonic()
    status, _, doc = post(daemon.port, long.read_bytes(), {**AUTH, "Content-Type": "audio/wav"})
    t1 = time.monotonic()
    time.sleep(0.5)
    done.set()
    listener.join(10)
    assert status == 200 and doc["summary"]["streams"][0]["estimates"] > 150
    during = [t for t in arrivals if t0 <= t <= t1]
    gaps = np.diff([t0, *during, t1])
    # The live stream publishes every 0.25 s of audio; it must not wait for the analysis.
    assert t1 - t0 > 1.0 and len(during) >= (t1 - t0) / 0.25 / 2, (t1 - t0, len(during))
    assert gaps.max() < 1.0, gaps.max()
