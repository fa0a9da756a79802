"""How many concurrent call legs one machine keeps up with: ``emotion-monitor bench --parts ingest``.

One run, a ramp. The benchmark starts a real daemon (``emotion-monitor run`` in
a subprocess, network streams only, gate off so that every window is
classified: the worst case), then plays phone calls at it from this process:
each leg is a Twilio Media Stream (20 ms messages of base64 8 kHz mu-law, one
connection per leg, as Twilio sends them; ``protocol: ingest`` uses /ingest
with 100 ms s16le frames instead) of real speech, looped, in real time. It
starts ``legs_start`` legs, adds ``legs_step`` every ``step_s`` seconds up to
``legs_max``, and per step measures, after ``settle_s``:

* audio-to-publish latency, end to end: from the moment the message holding
  a window's last sample was sent to the moment a WebSocket subscriber
  received that window's estimate (p50, p99, max);
* windows skipped as stale and audio frames dropped, from ``/healthz``;
* how late the load generator itself sent (its own p99 lag), so that an
  overloaded generator is not mistaken for a slow daemon.

A step holds when nothing was skipped or dropped and p99 is under
``p99_limit_ms``. The reported capacity is the largest step that held; the
ramp stops at the first step that does not.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr

from dropformer.errors import EmotionMonitorError
from streamer.core.codecs import encode

log = logging.getLogger(__name__)

CHUNK_MS = 20  # Twilio's media message
INGEST_FRAME_MS = 100


@dataclass
class Leg:
    """One call leg of the load: its stream id and when each chunk went out."""

    index: int
    stream_id: str
    sent: list[float] = field(default_factory=list)  # wall time each chunk was sent
    lag: list[float] = field(default_factory=list)  # how late each chunk was sent, s
    task: asyncio.Task[None] | None = None


def load_speech(audio: list[Path], seconds: float = 60.0) -> np.ndarray:
    """Real speech at 16 kHz, looped from the files, about ``seconds`` long."""
    parts, total = [], 0
    while total < seconds * 16000:
        for p in audio:
            x, rate = sf.read(str(p), dtype="float32", always_2d=True)
            x = x.mean(axis=1)
            if rate != 16000:
                x = soxr.resample(x, rate, 16000).astype(np.float32)
            parts.append(x)
            total += len(x)
            if total >= seconds * 16000:
                break
    return np.concatenate(parts)


def twilio_media(audio_16k: np.ndarray) -> list[str]:
    """The speech as Twilio ``media`` messages (8 kHz mu-law, 20 ms each), pre-encoded."""
    x8 = soxr.resample(audio_16k, 16000, 8000).astype(np.float32)
    data = encode(x8, "mulaw")
    step = 8 * CHUNK_MS
    msgs = []
    for i in range(len(data) // step):
        payload = base64.b64encode(data[i * step : (i + 1) * step]).decode("ascii")
        msgs.append(
            json.dumps(
                {
                    "event": "media",
                    "sequenceNumber": str(i + 2),
                    "streamSid": "MZbench",
                    "media": {
                        "track": "inbound",
                        "chunk": str(i + 1),
                        "timestamp": str(i * CHUNK_MS),
                        "payload": payload,
                    },
                }
            )
        )
    return msgs


def ingest_frames(audio_16k: np.ndarray) -> list[bytes]:
    data = encode(audio_16k, "pcm_s16le")
    step = 2 * 16 * INGEST_FRAME_MS
    return [data[i : i + step] for i in range(0, len(data) - step + 1, step)]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


class Ramp:
    """The load generator and the measurements (runs in this process)."""

    def __init__(self, base_url: str, protocol: str, audio: np.ndarray, token: str | None) -> None:
        self.base_url = base_url
        self.protocol = protocol
        self.token = token
        self.chunk_s = (CHUNK_MS if protocol == "twilio" else INGEST_FRAME_MS) / 1000
        self.chunks: list[str] | list[bytes] = (
            twilio_media(audio) if protocol == "twilio" else ingest_frames(audio)
        )
        self.legs: dict[str, Leg] = {}
        self.latencies: list[tuple[float, float]] = []  # (receive time, latency s)
        self.estimates = 0
        self.failures: list[str] = []

    def _start_message(self, leg: Leg) -> str:
        if self.protocol == "twilio":
            call_sid = leg.stream_id.split(".")[0]
            return json.dumps(
                {
                    "event": "start",
                    "sequenceNumber": "1",
                    "streamSid": "MZbench",
                    "start": {
                        "accountSid": "ACbench",
                        "streamSid": f"MZbench{leg.index}",
                        "callSid": call_sid,
                        "tracks": ["inbound"],
                        "customParameters": {"token": self.token} if self.token else {},
                        "mediaFormat": {
                            "encoding": "audio/x-mulaw",
                            "sampleRate": 8000,
                            "channels": 1,
                        },
                    },
                }
            )
        return json.dumps(
            {
                "type": "start",
                "stream_id": leg.stream_id,
                "sample_rate_hz": 16000,
                "encoding": "pcm_s16le",
            }
        )

    async def run_leg(self, leg: Leg) -> None:
        from websockets.asyncio.client import connect

        path = "/twilio" if self.protocol == "twilio" else "/ingest"
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        loop = asyncio.get_running_loop()
        try:
            async with connect(
                self.base_url + path, additional_headers=headers, max_queue=4, compression=None
            ) as ws:
                await ws.send(self._start_message(leg))
                if self.protocol == "ingest":
                    await ws.recv()
                offset = (leg.index * 7919) % len(self.chunks)  # legs start at different places
                # calls start at random moments: spread the legs' window boundaries over the hop
                await asyncio.sleep((leg.index * 0.618034) % 1.0)
                t0 = loop.time()
                i = 0
                while True:
                    due = t0 + i * self.chunk_s
                    delay = due - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    now = loop.time()
                    await ws.send(self.chunks[(offset + i) % len(self.chunks)])
                    leg.sent.append(time.monotonic())
                    leg.lag.append(max(0.0, now - due))
                    i += 1
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.failures.append(f"{leg.stream_id}: {type(exc).__name__}: {exc}")

    async def subscribe(self) -> None:
        from websockets.asyncio.client import connect

        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        async with connect(
            self.base_url + "/ws", max_queue=None, max_size=None, additional_headers=headers
        ) as ws:
            async for raw in ws:
                now = time.monotonic()
                ev = json.loads(raw)
                if ev.get("type") != "emotion.estimate" or not ev.get("speech"):
                    continue
                leg = self.legs.get(ev["stream_id"])
                if leg is None:
                    continue
                self.estimates += 1
                k = max(
                    0, -(-int(ev["audio_end_ms"]) // int(self.chunk_s * 1000)) - 1
                )  # chunk with the last sample
                if k < len(leg.sent):
                    self.latencies.append((now, now - leg.sent[k]))

    def add_legs(self, n: int) -> None:
        for _ in range(n):
            i = len(self.legs)
            sid = f"CAbench{i:04d}.caller" if self.protocol == "twilio" else f"bench{i:04d}"
            leg = Leg(i, sid)
            self.legs[sid] = leg
            leg.task = asyncio.create_task(self.run_leg(leg))

    async def stop(self) -> None:
        tasks = [leg.task for leg in self.legs.values() if leg.task is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _health(http_url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{http_url}/healthz", timeout=10) as r:
        doc: dict[str, Any] = json.loads(r.read())
        return doc


def _losses(health: dict[str, Any]) -> dict[str, int]:
    streams = list(health.get("streams", {}).values())
    ended = health.get("ended_streams", {})
    worker = health.get("worker", {})
    return {
        "skipped_stale": sum(s.get("skipped_stale", 0) for s in streams)
        + ended.get("skipped_stale", 0),
        "dropped_frames": sum(s.get("dropped_frames", 0) for s in streams)
        + ended.get("dropped_frames", 0),
        "evicted": int(worker.get("evicted", 0)),
        "windows": sum(s.get("windows", 0) for s in streams) + ended.get("windows", 0),
        "inferred": sum(s.get("inferred", 0) for s in streams) + ended.get("inferred", 0),
    }


def start_daemon(
    port: int,
    checkpoint: str | None,
    device: str,
    threads: int,
    overrides: list[str],
    token: str | None,
) -> subprocess.Popen[bytes]:
    """``emotion-monitor run`` with network streams only, on loopback ``port``."""
    sets = [
        "streams=[]",
        f"publish.websocket.port={port}",
        "publish.websocket.max_queue=10000",
        "gate.kind=none",
        "status_interval_s=null",
        "ingest.twilio.enabled=true",
        "ingest.max_sessions=2000",
        "access.max_connections=4000",  # every leg of the ramp comes from this machine
        "access.max_connections_per_address=4000",
        f"model.device={device}",
        f"model.threads={threads}",
        *([f"model.checkpoint={checkpoint}"] if checkpoint else []),
        *overrides,
    ]
    cmd = [sys.executable, "-m", "streamer.cli", "run", "--log-level", "WARNING"]
    for s in sets:
        cmd += ["--set", s]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if token:
        env["EMOTION_MONITOR_TOKEN"] = token
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


async def ramp(
    *, audio: list[Path], checkpoint: str | None, device: str, threads: int, protocol: str,
    legs_start: int, legs_step: int, legs_max: int, step_s: float, settle_s: float,
    p99_limit_ms: float, daemon_overrides: list[str],
) -> dict[str, Any]:  # fmt: skip
    """Run the ramp (see the module docstring); per-step rows and the capacity."""
    import secrets
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    token = secrets.token_hex(16)
    loop = asyncio.get_running_loop()
    me = asyncio.current_task()
    if me is not None:  # SIGTERM (e.g. `timeout`) cancels the ramp, so the daemon is stopped too
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGTERM, me.cancel)
    proc = start_daemon(port, checkpoint, device, threads, daemon_overrides, token)
    http_url, base_url = f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}"
    rows: list[dict[str, Any]] = []
    capacity: dict[str, Any] | None = None
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"the daemon exited: {proc.stderr.read().decode() if proc.stderr else ''}"
                )
            with contextlib.suppress(OSError):
                info = _health(http_url)
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the daemon did not start within 120 s")
            await asyncio.sleep(0.5)
        model = info.get("model", {})
        load = Ramp(base_url, protocol, load_speech(audio), token)
        subscriber = asyncio.create_task(load.subscribe())
        await asyncio.sleep(0.5)
        if subscriber.done():  # e.g. the /ws subscriber refused: no latency could be measured
            raise EmotionMonitorError(
                f"ingest bench: the /ws subscriber failed: {subscriber.exception()!r}"
            )
        legs = legs_start
        while legs <= legs_max:
            load.add_legs(legs - len(load.legs))
            step_start = time.monotonic()
            await asyncio.sleep(settle_s)
            before = await asyncio.to_thread(_health, http_url)
            t_from = time.monotonic()
            lag_from = {sid: len(leg.lag) for sid, leg in load.legs.items()}
            await asyncio.sleep(max(1.0, step_s - settle_s))
            after = await asyncio.to_thread(_health, http_url)
            t_to = time.monotonic()
            lat = [x for t, x in load.latencies if t_from <= t <= t_to]
            lags = [x for sid, leg in load.legs.items() for x in leg.lag[lag_from.get(sid, 0) :]]
            lb, la = _losses(before), _losses(after)
            row = {
                "legs": legs,
                "estimates": len(lat),
                "windows_per_s": round((la["inferred"] - lb["inferred"]) / (t_to - t_from), 1),
                "p50_ms": round(percentile(lat, 50) * 1000, 1),
                "p99_ms": round(percentile(lat, 99) * 1000, 1),
                "max_ms": round(max(lat) * 1000, 1) if lat else float("nan"),
                "skipped_stale": la["skipped_stale"] - lb["skipped_stale"],
                "dropped_frames": la["dropped_frames"] - lb["dropped_frames"],
                "sender_lag_p99_ms": round(percentile(lags, 99) * 1000, 1),
                "failures": len(load.failures),
                "step_s": round(t_to - step_start, 1),
            }
            row["holds"] = bool(
                lat and row["skipped_stale"] == 0 and row["dropped_frames"] == 0
                and row["p99_ms"] < p99_limit_ms and not load.failures
            )  # fmt: skip
            rows.append(row)
            log.info("ingest bench: %s", row)
            print(json.dumps(row), flush=True)
            if not row["holds"]:
                break
            capacity = row
            legs += legs_step
        await load.stop()
        subscriber.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await subscriber
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30)
        if proc.poll() is None:
            proc.kill()
    return {
        "rows": rows,
        "capacity": capacity,
        "model": model,
        "protocol": protocol,
        "failures": load.failures[:5],
    }


def markdown(result: dict[str, Any]) -> str:
    """The per-step table."""
    lines = [
        "| legs | estimates | windows/s | p50 ms | p99 ms | max ms | skipped stale | dropped frames | sender lag p99 ms | holds |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['legs']} | {r['estimates']} | {r['windows_per_s']} | {r['p50_ms']} | {r['p99_ms']} | "
            f"{r['max_ms']} | {r['skipped_stale']} | {r['dropped_frames']} | {r['sender_lag_p99_ms']} | "
            f"{'yes' if r['holds'] else 'no'} |"
        )
    cap = result["capacity"]
    lines.append("")
    lines.append(
        f"capacity: {cap['legs']} concurrent legs without skipping, audio-to-publish p50 "
        f"{cap['p50_ms']} ms, p99 {cap['p99_ms']} ms"
        if cap
        else "capacity: not even the first step held"
    )
    return "\n".join(lines)
