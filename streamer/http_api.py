"""``POST /v1/analyze``: analyse an uploaded recording on the daemon's port (docs/analyze.md,
docs/openapi.yaml).

The body is the recording itself (``Content-Type: audio/wav``, ``audio/flac``,
``audio/ogg`` or ``application/octet-stream``; not multipart). The answer is JSON:
``summary`` (as ``summary.json`` of ``emotion-monitor analyze``), ``utterances`` (one
object per ``emotion.utterance`` event) and, with ``?timeline=true``, ``timeline`` (every
event the daemon published). Query options: ``channels=mix|separate``,
``channel_names=agent,customer``, ``name=...`` (the stream id; default ``upload``).

The same :class:`~streamer.analysis.Analyzer` as the command runs the recording through
a :class:`~streamer.daemon.Daemon` of its own, off the event loop: on a thread with its
own event loop, with a model of its own (loaded on the first request and kept), so the
live streams never wait for it. ``api.max_concurrent`` analyses at once (more: 429 with
``Retry-After``), each stopped after ``api.timeout_s`` (503). The upload lives in a
private temporary folder while it is analysed and is deleted before the answer, unless
``api.keep_dir`` asks to keep it and its results.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from dropformer.errors import AudioError
from streamer import wiring
from streamer.analysis import AnalysisInput, Analyzer, FileAnalysis, safe_name, write_outputs
from streamer.config import AnalyzeConfig, DaemonConfig
from streamer.publishers.http import HttpAnswer, HttpRequest, PostRoute
from streamer.sources.base import OUTPUT_RATE_HZ

log = logging.getLogger(__name__)

PATH = "/v1/analyze"
AUDIO_TYPES = {
    "audio/wav": ".wav",
    "audio/x-wav": ".wav",
    "audio/wave": ".wav",
    "audio/vnd.wave": ".wav",
    "audio/flac": ".flac",
    "audio/x-flac": ".flac",
    "audio/ogg": ".ogg",
    "application/ogg": ".ogg",
    "application/octet-stream": ".audio",
}
"""Content types accepted (the format is read from the file's own header)."""


@dataclass(eq=False)
class _Job:
    """A running analysis: the thread's loop and stop event, once it started."""

    loop: asyncio.AbstractEventLoop | None = None
    stop: asyncio.Event | None = None
    started: float = field(default_factory=time.monotonic)

    def cancel(self) -> None:
        if self.loop is not None and self.stop is not None:
            with contextlib.suppress(RuntimeError):  # its loop already ended
                self.loop.call_soon_threadsafe(self.stop.set)


class AnalysisService:
    """The handler of ``POST /v1/analyze`` and the model it analyses with.

    ``async with AnalysisService(cfg) as api: websocket.add_post_route(PATH, api.route())``.
    """

    def __init__(self, cfg: DaemonConfig) -> None:
        self.cfg = cfg
        self.running = 0
        self.answered = 0
        self.refused_busy = 0
        self._backend: Any = None
        self._loading = asyncio.Lock()
        self._jobs: set[_Job] = set()

    async def __aenter__(self) -> AnalysisService:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        for job in list(self._jobs):
            job.cancel()
        backend, self._backend = self._backend, None
        if backend is not None:
            await backend.__aexit__(None, None, None)

    def route(self) -> PostRoute:
        api = self.cfg.api
        return PostRoute(
            self.handle, api.max_upload_bytes, api.upload_timeout_s, "api.max_upload_bytes"
        )

    def stats(self) -> dict[str, int]:
        return {
            "running": self.running,
            "answered": self.answered,
            "refused_busy": self.refused_busy,
        }

    async def _model(self) -> Any:
        """The analysis model, loaded on first use (its own worker thread, not the live one's)."""
        async with self._loading:
            if self._backend is None:
                backend = wiring.make_worker(
                    self.cfg.model,
                    self.cfg.worker,
                    round(self.cfg.windowing.window_s * OUTPUT_RATE_HZ),
                )
                await backend.__aenter__()
                self._backend = backend
            return self._backend

    async def handle(self, request: HttpRequest) -> HttpAnswer:
        """Check the request, read the upload, analyse it, answer JSON."""
        suffix = AUDIO_TYPES.get(request.content_type)
        if suffix is None:
            return HttpAnswer.error(
                415,
                f"Content-Type {request.content_type or '(none)'!r} is not audio; send the recording "
                f"as the raw body with Content-Type audio/wav, audio/flac or audio/ogg",
            )
        query = request.query
        try:
            options = AnalyzeConfig.model_validate(
                {
                    **self.cfg.analyze.model_dump(),
                    **({"channels": query["channels"]} if "channels" in query else {}),
                    **(
                        {"channel_names": [n for n in query["channel_names"].split(",") if n]}
                        if "channel_names" in query
                        else {}
                    ),
                }
            )
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
            return HttpAnswer.error(400, f"bad query parameter ({problems})")
        name = safe_name(query.get("name", "upload"))
        timeline = query.get("timeline", "false").lower() in ("1", "true", "yes")
        if self.running >= self.cfg.api.max_concurrent:
            self.refused_busy += 1
            return HttpAnswer.error(
                429,
                f"{self.running} analysis(es) running (api.max_concurrent); try again later",
                (("Retry-After", "5"),),
            )
        self.running += 1
        try:
            body = await request.read_body()
            return await self._analyze(body, suffix, name, options, timeline)
        finally:
            self.running -= 1

    async def _analyze(
        self, body: bytes, suffix: str, name: str, options: AnalyzeConfig, timeline: bool
    ) -> HttpAnswer:
        backend = await self._model()
        cfg = self.cfg.model_copy(update={"analyze": options})
        job = _Job()
        self._jobs.add(job)
        with tempfile.TemporaryDirectory(prefix="emotion-monitor-upload-") as tmp:
            path = Path(tmp) / f"{name}{suffix}"
            path.write_bytes(body)
            item = AnalysisInput(path, name)
            task = asyncio.ensure_future(asyncio.to_thread(_run_job, cfg, backend, item, job))
            try:
                fa = await asyncio.wait_for(asyncio.shield(task), self.cfg.api.timeout_s)
            except asyncio.TimeoutError:
                job.cancel()
                with contextlib.suppress(Exception):
                    await task
                return HttpAnswer.error(
                    503,
                    f"the analysis took longer than {self.cfg.api.timeout_s:g} s (api.timeout_s)",
                )
            except AudioError as exc:
                text = (
                    str(exc).replace(repr(str(path)), "the upload").replace(str(path), "the upload")
                )
                return HttpAnswer.error(415, text)
            except asyncio.CancelledError:
                job.cancel()
                with contextlib.suppress(Exception):
                    await task
                raise
            finally:
                self._jobs.discard(job)
            if self.cfg.api.keep_dir is not None:
                keep = Path(self.cfg.api.keep_dir) / f"{time.strftime('%Y%m%d-%H%M%S')}-{name}"
                write_outputs(fa, keep)
                shutil.copyfile(path, keep / path.name)
                log.info("kept the upload and its results in %s", keep)
        self.answered += 1
        return HttpAnswer.json(200, answer_doc(fa, timeline=timeline))


def answer_doc(fa: FileAnalysis, *, timeline: bool) -> dict[str, Any]:
    """The JSON answer: ``summary``, ``utterances`` and, when asked, ``timeline``."""
    summary = fa.summary_doc()
    summary.pop("file", None)  # a temporary path, gone already
    doc: dict[str, Any] = {
        "summary": summary,
        "utterances": [r for s in fa.streams for r in s.utterances],
    }
    if timeline:
        doc["timeline"] = fa.events
    return doc


def _run_job(cfg: DaemonConfig, backend: Any, item: AnalysisInput, job: _Job) -> FileAnalysis:
    """The analysis on this thread, with its own event loop (the daemon's loop stays free)."""

    async def main() -> FileAnalysis:
        job.stop = asyncio.Event()
        job.loop = asyncio.get_running_loop()
        async with Analyzer(cfg, backend=backend) as analyzer:
            return await analyzer.analyze(item, stop=job.stop)

    return asyncio.run(main())
