"""``emotion-monitor send``: stream a file or the local microphone to a remote monitor.

What a thin edge device (or a test) runs: it speaks the ``/ingest`` protocol
(``docs/ingest.md``) to a daemon elsewhere. Audio is read at 16 kHz mono (files
of any rate and channel count are resampled) and sent in ``block_ms`` frames
in the chosen encoding.

Config keys (top level of ``--config FILE`` or ``--set key=value``; flags win):
``input``, ``url``, ``stream``, ``encoding``, ``realtime``, ``token``,
``block_ms``, ``device``, ``metadata`` (see :class:`SendConfig`).

Exit status: 0 when the daemon confirmed the stop (its final counters are
printed), 1 when it refused or closed the session or cannot be reached (the
reason is printed), 2 for a bad config or an unreadable file. Ctrl-C stops the
session cleanly (the daemon flushes the stream and confirms).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from dropformer.configio import StrictModel, validate
from dropformer.errors import EmotionMonitorError
from streamer.access import TOKEN_ENV, token_from_env

HELP = "stream a file or the microphone to a remote monitor's /ingest endpoint"
SET_EXAMPLE = "block_ms=50"
DEFAULTS: dict[str, Any] = {}
log = logging.getLogger(__name__)


class SendConfig(StrictModel):
    input: str | None = None
    """An audio file (any rate and channels), or 'mic' for the local microphone."""
    url: str = Field("ws://127.0.0.1:8765/ingest", pattern=r"^wss?://")
    """The daemon's ingest endpoint (wss:// through a TLS reverse proxy)."""
    stream: str | None = Field(None, pattern=r"^[A-Za-z0-9_.:-]{1,128}$")
    """Stream id at the daemon; null = the file's name (or 'mic')."""
    encoding: Literal["pcm_s16le", "pcm_f32le", "mulaw"] = "pcm_s16le"
    """Sample encoding on the wire."""
    realtime: bool = True
    """true: send like live audio; false: as fast as the daemon allows (its max_speed)."""
    token: str | None = None
    """The monitor's token; prefer the EMOTION_MONITOR_TOKEN environment variable."""
    block_ms: float = Field(100.0, gt=0, le=2000)
    """Audio per message, milliseconds."""
    device: str | int | None = None
    """mic: input device name (substring) or index; null = the system default."""
    metadata: dict[str, str] = Field(default_factory=dict)
    """Sent with start, e.g. {call_id: c-17, role: caller}."""


class SendError(EmotionMonitorError):
    """The daemon refused or closed the session."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Positional input; --url, --stream, --encoding, --realtime/--no-realtime, --token, ..."""
    parser.add_argument(
        "input", nargs="?", default=None, help="audio file, or 'mic' for the microphone"
    )
    parser.add_argument(
        "--url", default=None, help="ingest endpoint (default ws://127.0.0.1:8765/ingest)"
    )
    parser.add_argument(
        "--stream", default=None, metavar="ID", help="stream id at the daemon (default: file name)"
    )
    parser.add_argument(
        "--encoding",
        default=None,
        choices=["pcm_s16le", "pcm_f32le", "mulaw"],
        help="sample encoding (default pcm_s16le)",
    )
    parser.add_argument("--realtime", action=argparse.BooleanOptionalAction, default=None,
                        help="send at the pace of live audio (default) or as fast as the daemon allows")  # fmt: skip
    parser.add_argument(
        "--token", default=None, help=f"bearer token (better: the {TOKEN_ENV} environment variable)"
    )
    parser.add_argument("--device", default=None, help="mic: input device name or index")
    parser.add_argument("--role", default=None, help="metadata role, e.g. caller")
    parser.add_argument("--call-id", default=None, help="metadata call_id")


def main(args: argparse.Namespace, config: dict[str, Any]) -> int:
    merged = dict(config)
    for key in ("input", "url", "stream", "encoding", "realtime", "token", "device"):
        value = getattr(args, key)
        if value is not None:
            merged[key] = value
    meta = dict(merged.get("metadata") or {})
    if args.role is not None:
        meta["role"] = args.role
    if args.call_id is not None:
        meta["call_id"] = args.call_id
    if meta:
        merged["metadata"] = meta
    cfg = validate(SendConfig, merged, source="send config")
    if cfg.input is None:
        raise EmotionMonitorError("send needs an input: an audio file, or 'mic' for the microphone")
    try:
        stopped = asyncio.run(send(cfg))
    except SendError as exc:
        print(f"send: {exc}", file=sys.stderr)
        return 1
    c, s = stopped.get("counters", {}), stopped.get("session", {})
    print(
        f"stream {stopped.get('stream_id')}: {s.get('audio_ms', 0) / 1000:.1f} s sent, "
        f"{c.get('windows', 0)} windows, {c.get('inferred', 0)} analysed, "
        f"{c.get('skipped_stale', 0)} skipped stale, {c.get('dropped_frames', 0)} frames dropped"
    )
    print(json.dumps(stopped))
    return 0


async def send(cfg: SendConfig) -> dict[str, Any]:
    """Run one session; returns the daemon's ``stopped`` message (raises SendError)."""

    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

    from streamer.core.codecs import encode

    assert cfg.input is not None
    is_mic = cfg.input == "mic"
    stream_id = cfg.stream or ("mic" if is_mic else _stream_id_of(cfg.input))
    source = _source(cfg, stream_id, is_mic)
    token = cfg.token or token_from_env()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGINT, stop.set)
    try:
        async with source, connect(cfg.url, additional_headers=headers, open_timeout=10) as ws:
            await ws.send(json.dumps({
                "type": "start", "v": 1, "stream_id": stream_id, "sample_rate_hz": 16000,
                "encoding": cfg.encoding, "channels": 1, "metadata": cfg.metadata,
            }))  # fmt: skip
            started = json.loads(await ws.recv())
            if started.get("type") != "started":
                raise SendError(
                    f"the daemon refused the session: {started.get('message', started)}"
                )
            limits = started.get("limits", {})
            max_frame = int(limits.get("max_frame_bytes", 65536))
            speed = 1.0 if cfg.realtime or is_mic else 0.9 * float(limits.get("max_speed", 1.0))
            log.info(
                "session %s: streaming %s as %s to %s",
                started["session_id"],
                cfg.input,
                stream_id,
                cfg.url,
            )
            replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
            reader = asyncio.create_task(_read(ws, replies))
            t0, sent_s = loop.time(), 0.0
            try:
                async for frame in source:
                    data = encode(frame, cfg.encoding)
                    for i in range(0, len(data), max_frame):
                        await ws.send(data[i : i + max_frame])
                    sent_s += frame.size / 16000
                    if not is_mic:  # a microphone is paced by its clock
                        await asyncio.sleep(max(0.0, t0 + sent_s / speed - loop.time()))
                    if stop.is_set() or reader.done():
                        break
                await ws.send(json.dumps({"type": "stop"}))
                async with asyncio.timeout(30):
                    while True:
                        msg = await replies.get()
                        if msg.get("type") == "stopped":
                            return msg
            finally:
                reader.cancel()
    except ConnectionClosed as exc:
        rcvd = exc.rcvd
        raise SendError(
            f"the daemon closed the session: {rcvd.code} {rcvd.reason}"
            if rcvd
            else "the connection was lost"
        ) from None
    except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as exc:
        raise SendError(f"cannot stream to {cfg.url}: {exc}") from None
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGINT)


async def _read(ws: Any, replies: asyncio.Queue[dict[str, Any]]) -> None:
    """Log the daemon's non-fatal errors; hand on everything else."""
    async for raw in ws:
        try:
            msg = json.loads(raw)
        except ValueError:
            continue
        if msg.get("type") == "error":
            log.warning("daemon: %s: %s", msg.get("code"), msg.get("message"))
        replies.put_nowait(msg)


def _stream_id_of(path: str) -> str:
    import re

    stem = re.sub(r"[^A-Za-z0-9_.:-]", "_", Path(path).stem)[:128]
    return stem or "file"


def _source(cfg: SendConfig, stream_id: str, is_mic: bool) -> Any:
    if is_mic:
        from streamer.sources.microphone import MicrophoneSource

        return MicrophoneSource(cfg.device, stream_id, block_ms=min(cfg.block_ms, 100.0))
    from streamer.sources.file import FileSource

    return FileSource(cfg.input or "", stream_id, realtime=False, block_ms=cfg.block_ms)
