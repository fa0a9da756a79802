"""The terminal client: print a running monitor's events, one line each.

``emotion-monitor watch`` (see :mod:`streamer.commands.watch`) is a thin
wrapper around :func:`watch`. Two output formats:

* human (default): one line per estimate with the local time, stream, label,
  confidence and a small text bar, arousal/valence and the audio span;
  utterances (``== utterance``: the label of a whole utterance, its audio span
  and any quality warning), transitions, status changes and alerts get their
  own marked lines;
* ``json``: every event exactly as received, one JSON object per line, for
  piping into ``jq`` or a file (protocol messages such as ``hello`` are not
  printed; they are logged).

The connection is retried with exponential backoff (the daemon may restart)
unless ``once`` is set, in which case a failed or lost connection ends the
watch. Diagnostics go to :mod:`logging`; only events go to the output stream.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from dropformer.configio import StrictModel
from dropformer.errors import ConfigError, EmotionMonitorError
from streamer.access import token_from_env
from streamer.core.jsonguard import MessageError, loads_object

log = logging.getLogger(__name__)

DEFAULT_URL = "ws://127.0.0.1:8765/ws"


class WatchConfig(StrictModel):
    """Settings of the terminal client (top-level keys of its YAML config).

    Attributes:
        url: WebSocket endpoint of a running monitor (default ``ws://127.0.0.1:8765/ws``).
        streams: stream ids to subscribe to; empty means every stream.
        json_lines: print raw JSON lines instead of text (YAML key ``json``).
        count: exit after this many estimates; ``None`` runs until interrupted.
        once: do not reconnect; a failed or lost connection ends the watch.
        open_timeout_s: how long one connection attempt may take (seconds).
        backoff_initial_s: first wait before reconnecting (seconds); doubles per failure.
        backoff_max_s: longest wait between reconnection attempts (seconds).
        bar_width_chars: width of the confidence bar in the text format.
        token: the monitor's token (prefer the EMOTION_MONITOR_TOKEN environment variable).
    """

    url: str = DEFAULT_URL
    token: str | None = None
    streams: list[str] = Field(default_factory=list)
    json_lines: bool = Field(default=False, alias="json")
    count: int | None = Field(default=None, ge=1)
    once: bool = False
    open_timeout_s: float = Field(default=5.0, gt=0)
    backoff_initial_s: float = Field(default=0.5, gt=0)
    backoff_max_s: float = Field(default=10.0, gt=0)
    bar_width_chars: int = Field(default=10, ge=1, le=100)

    model_config = {**StrictModel.model_config, "populate_by_name": True}

    @field_validator("url")
    @classmethod
    def _ws_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ValueError(
                "must be a WebSocket URL like ws://127.0.0.1:8765/ws (ws:// or wss://)"
            )
        return value


# -- formatting -----------------------------------------------------------------
def text_bar(fraction: float, width_chars: int = 10, *, ascii_only: bool = False) -> str:
    """A bar of ``width_chars`` cells filled to ``fraction`` (clipped to [0, 1])."""
    full, empty = ("#", ".") if ascii_only else ("\u2588", "\u2591")
    filled = round(max(0.0, min(1.0, float(fraction))) * width_chars)
    return full * filled + empty * (width_chars - filled)


def _seconds(ms: Any) -> str:
    return f"{float(ms) / 1000.0:.1f}s" if isinstance(ms, (int, float)) else "?"


def _signed(x: Any) -> str:
    return f"{float(x):+.2f}" if isinstance(x, (int, float)) else "  ?  "


def quality_warnings(quality: Any) -> list[str]:
    """Why audio with these quality measures may be hard to judge (as the dashboard warns):
    clipping above 1%, SNR below 10 dB, telephone band."""
    if not isinstance(quality, Mapping):
        return []
    out = []
    clipping, snr = quality.get("clipping"), quality.get("snr_db")
    if isinstance(clipping, (int, float)) and clipping > 0.01:
        out.append(f"clipping {100 * float(clipping):.0f}%")
    if isinstance(snr, (int, float)) and snr < 10:
        out.append(f"SNR {float(snr):.0f} dB")
    if quality.get("telephone_band") is True:
        out.append("telephone band")
    return out


def format_event(
    event: Mapping[str, Any],
    *,
    bar_width_chars: int = 10,
    ascii_only: bool = False,
    clock: str | None = None,
) -> str | None:
    """One human-readable line for ``event``; ``None`` for messages not shown.

    ``clock`` is the time column (default: local time now, ``HH:MM:SS``).
    """
    kind = event.get("type")
    now = clock if clock is not None else time.strftime("%H:%M:%S")
    sid = str(event.get("stream_id", "-"))
    head = f"{now}  {sid:<10}"
    arrow = "->" if ascii_only else "\u2192"
    if kind == "emotion.estimate":
        conf = event.get("confidence")
        conf_f = float(conf) if isinstance(conf, (int, float)) else 0.0
        tokens = event.get("tokens") or {}
        latency = event.get("latency_ms")
        line = (
            f"{head}  {str(event.get('label', '?')):<10} {conf_f:4.2f} "
            f"{text_bar(conf_f, bar_width_chars, ascii_only=ascii_only)}  "
            f"A{_signed(event.get('arousal'))} V{_signed(event.get('valence'))}  "
            f"[{_seconds(event.get('audio_start_ms'))}-{_seconds(event.get('audio_end_ms'))}]"
        )
        if isinstance(tokens, Mapping) and "in" in tokens and "kept" in tokens:
            line += f"  tokens {tokens['kept']}/{tokens['in']}"
        if isinstance(latency, (int, float)):
            line += f"  {float(latency):.0f}ms"
        if event.get("speech") is False:
            line += "  (no speech)"
        if isinstance(event.get("model"), Mapping) and event["model"].get("random_init"):
            line += "  [UNTRAINED MODEL]"
        return line
    if kind == "emotion.utterance":
        conf = event.get("confidence")
        conf_f = float(conf) if isinstance(conf, (int, float)) else 0.0
        line = (
            f"{head}  == utterance {str(event.get('label', '?')):<10} {conf_f:4.2f} "
            f"{text_bar(conf_f, bar_width_chars, ascii_only=ascii_only)}  "
            f"A{_signed(event.get('arousal'))} V{_signed(event.get('valence'))}  "
            f"[{_seconds(event.get('audio_start_ms'))}-{_seconds(event.get('audio_end_ms'))}]"
        )
        if event.get("truncated"):
            line += "  (last part only)"
        warnings = quality_warnings(event.get("quality"))
        if warnings:
            line += "  ! " + ", ".join(warnings)
        return line
    if kind == "emotion.transition":
        conf = event.get("confidence")
        conf_s = f" ({float(conf):.2f})" if isinstance(conf, (int, float)) else ""
        before = event.get("from") or "(first label)"
        return (
            f"{head}  >> {before} {arrow} {event.get('to', '?')}{conf_s}"
            f" at {_seconds(event.get('audio_ms'))}"
        )
    if kind == "stream.status":
        counters = event.get("counters") or {}
        shown = (
            ", ".join(f"{k} {v}" for k, v in counters.items())
            if isinstance(counters, Mapping)
            else ""
        )
        detail = f" ({event['detail']})" if event.get("detail") else ""
        return (
            f"{head}  -- status {str(event.get('state', '?')).upper()}{detail}"
            f" at {_seconds(event.get('audio_ms'))}" + (f"  [{shown}]" if shown else "")
        )
    if kind == "alert":
        return (
            f"{head}  !! ALERT {str(event.get('severity', '?')).upper()} "
            f"{event.get('kind', '?')}: {event.get('message', '')}"
            f" at {_seconds(event.get('audio_ms'))}"
        )
    return None


# -- the client -----------------------------------------------------------------
class _Printer:
    """Writes events to ``out`` in the configured format and counts estimates."""

    def __init__(self, config: WatchConfig, out: TextIO) -> None:
        self.config = config
        self.out = out
        self.estimates = 0
        encoding = getattr(out, "encoding", None) or "ascii"
        try:
            "\u2588\u2591\u2192".encode(encoding)
            self.ascii_only = False
        except (UnicodeEncodeError, LookupError):
            self.ascii_only = True

    def wants(self, event: Mapping[str, Any]) -> bool:
        sid = event.get("stream_id")
        return not self.config.streams or not isinstance(sid, str) or sid in self.config.streams

    def handle(self, raw: str | bytes) -> None:
        try:
            event = loads_object(raw, max_bytes=1 << 22, what="message")
        except MessageError as exc:
            log.warning("ignoring a message: %s: %.80r", exc, raw)
            return
        kind = event.get("type")
        if kind == "hello":
            log.info(
                "connected; streams on the server: %s",
                ", ".join(event.get("streams") or []) or "none yet",
            )
            return
        if kind in ("subscribed", "error"):
            log.log(logging.WARNING if kind == "error" else logging.INFO, "server says %s", event)
            return
        if not self.wants(event):
            return
        if self.config.json_lines:
            line: str | None = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
        else:
            line = format_event(
                event, bar_width_chars=self.config.bar_width_chars, ascii_only=self.ascii_only
            )
        if line is not None:
            self.out.write(line + "\n")
            self.out.flush()
        if kind == "emotion.estimate":
            self.estimates += 1

    @property
    def done(self) -> bool:
        return self.config.count is not None and self.estimates >= self.config.count


def auth_headers(token: str | None) -> dict[str, str]:
    """``Authorization: Bearer`` for ``token``, else for EMOTION_MONITOR_TOKEN; none without one."""
    token = token or token_from_env()
    return {"Authorization": f"Bearer {token}"} if token else {}


def _connect_error(url: str, exc: BaseException) -> EmotionMonitorError:
    """A user-facing error for a failed connection attempt."""
    if isinstance(exc, InvalidURI):
        return ConfigError(
            f"url {url!r} is not a valid WebSocket URL ({exc}); use e.g. {DEFAULT_URL}"
        )
    if isinstance(exc, InvalidStatus):
        code = exc.response.status_code
        if code in (401, 403, 503):
            reason = exc.response.body.decode("utf-8", "replace").strip()
            return EmotionMonitorError(
                f"cannot watch {url}: the monitor refused with HTTP {code}: {reason}"
            )
        return EmotionMonitorError(
            f"cannot watch {url}: the server answered HTTP {code} instead of a WebSocket; "
            "check the path in --url (the monitor serves events on /ws)"
        )
    if isinstance(exc, TimeoutError):
        return EmotionMonitorError(
            f"cannot watch {url}: no answer within the open timeout; "
            "check the host and port in --url"
        )
    return EmotionMonitorError(
        f"cannot watch {url}: {exc.__class__.__name__}: {exc}; is `emotion-monitor run` "
        "running there? check --url"
    )


async def _session(ws: ClientConnection, printer: _Printer) -> None:
    """Subscribe, then print events until the count is reached or the socket closes."""
    if printer.config.streams:
        await ws.send(json.dumps({"type": "subscribe", "streams": printer.config.streams}))
    async for raw in ws:
        printer.handle(raw)
        if printer.done:
            return


async def watch(config: WatchConfig, out: TextIO | None = None) -> int:
    """Print events from ``config.url`` to ``out`` (default stdout).

    Returns the number of estimates printed. Reconnects with exponential
    backoff unless ``config.once``; with ``once`` a failed first connection
    raises :class:`EmotionMonitorError` (or :class:`ConfigError` for a bad URL)
    and a lost connection returns.
    """
    printer = _Printer(config, out if out is not None else sys.stdout)
    delay_s = config.backoff_initial_s
    while True:
        try:
            async with connect(
                config.url,
                open_timeout=config.open_timeout_s,
                max_size=1 << 22,
                additional_headers=auth_headers(config.token),
            ) as ws:
                delay_s = config.backoff_initial_s
                await _session(ws, printer)
                if printer.done:
                    return printer.estimates
            reason = "the server closed the connection"
        except ConnectionClosed as exc:
            reason = f"connection lost ({exc})"
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            error = _connect_error(config.url, exc)
            if config.once or isinstance(error, ConfigError):
                raise error from exc
            reason = str(error)
        if config.once:
            log.info("%s; not reconnecting (--once)", reason)
            return printer.estimates
        log.warning("%s; reconnecting in %.1f s", reason, delay_s)
        await asyncio.sleep(delay_s)
        delay_s = min(delay_s * 2.0, config.backoff_max_s)
