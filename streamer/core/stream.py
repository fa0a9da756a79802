"""The per-stream state machine: frames in, window requests and events out (sans-I/O).

``StreamCore`` sanitises frames, cuts windows, gates them, hands speech
windows to the caller as :class:`WindowRequest` (for the inference worker),
and turns results into smoothed estimates and transitions.

Ordering policy: every window gets a ``seq`` (0, 1, 2, ...). Windows are
applied to the smoother strictly in ``seq`` order through a small reorder
buffer: a silent window, or a result that arrives early, waits until every
earlier speech window has its result (``on_result``) or was skipped
(``on_skipped``). So out-of-order results are re-ordered, not lost. A result
for a window that is no longer pending (a duplicate, or one given up on) is
dropped and counted in ``late_results``. If more than ``max_pending`` windows
wait, the oldest unanswered one is given up on (counted in ``lost_results``)
so a worker that never answers cannot stall the stream.

Restarts: a stream whose source is started again (a microphone that came back)
gets a new core built with ``continues=`` the old one. Its ``seq`` numbers,
audio time (``audio_ms`` and friends) and counters go on from where the old
one stopped, so they stay monotonic per stream id for the life of the daemon;
the smoothed state starts afresh (the first label is announced again).

Utterances (``utterances=UtterancePolicy(...)``): besides the windows, the
core cuts the stream into utterances from the gate's verdicts
(:mod:`streamer.core.utterances`) and, when one ends (speech followed by
``end_silence_s`` of silence, or ``flush``), requests ONE classification of its
audio as an :class:`UtteranceRequest`, answered with ``on_utterance_result`` or
``on_utterance_skipped``. Its result becomes an ``emotion.utterance`` event at
once (utterances are not smoothed, so they need no reordering); it is
normalised with the stream's statistics at the time of the request but never
folded into them (the windows already were). Counters: ``utterances``
(published), ``skipped_utterances`` (stale), and as for windows
``inference_errors``, ``bad_results``, ``lost_results`` (given up on, or
outstanding at ``stop``).

Quality (``quality=True``): each speech window's estimate, and each utterance,
carries the audio-quality measures of :mod:`streamer.core.quality`.

Status events: ``online`` on start, then ``speech`` / ``silence`` each time
the gate's verdict changes (not every window), ``offline`` or ``error`` on
stop. The first non-finite input sample also yields a status event whose
``detail`` explains it; later ones are only counted.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dropformer.errors import AudioError, ConfigError
from dropformer.normalization import Moments, StreamNormalizer
from streamer.core.affect import arousal_valence
from streamer.core.events import (
    COUNTER_NAMES,
    EmotionEstimate,
    EmotionTransition,
    EmotionUtterance,
    Event,
    Quality,
    StreamState,
    StreamStatus,
)
from streamer.core.gate import Gate, GateDecision
from streamer.core.importance import TokenImportance, envelope, summarise
from streamer.core.quality import measure
from streamer.core.smoother import Smoother, SmootherUpdate
from streamer.core.utterances import Utterance, UtteranceCutter, UtterancePolicy
from streamer.core.windower import Window, Windower

log = logging.getLogger(__name__)

STREAM_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
EXTRA_COUNTERS = (
    "clipped_samples",
    "late_results",
    "lost_results",
    "bad_results",
    "inference_errors",
    "utterances",
    "skipped_utterances",
)


@dataclass(frozen=True)
class WindowRequest:
    """A speech window the inference worker should classify, then answer with
    ``StreamCore.on_result(seq, ...)`` or ``StreamCore.on_skipped(seq, ...)``."""

    stream_id: str
    seq: int
    start_sample: int
    end_sample: int
    samples: np.ndarray = field(repr=False)
    sample_rate_hz: int = 16000
    norm: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)
    """The stream's feature statistics (mean, std) to normalise this window with; None = none kept."""


@dataclass(frozen=True)
class UtteranceRequest:
    """An utterance the inference worker should classify as a whole, then answer with
    ``StreamCore.on_utterance_result(seq, ...)`` or ``StreamCore.on_utterance_skipped(seq, ...)``.
    ``seq`` numbers the stream's utterances (apart from the windows' ``seq``)."""

    stream_id: str
    seq: int
    start_sample: int
    end_sample: int
    samples: np.ndarray = field(repr=False)
    sample_rate_hz: int = 16000
    norm: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)
    """The stream's feature statistics at the request (mean, std); None = none kept."""
    truncated: bool = False
    """The utterance was longer than the maximum: this is its last part."""


InferenceRequest = WindowRequest | UtteranceRequest
"""What the core asks the inference worker to classify."""


@dataclass
class _UtteranceSlot:
    start_sample: int
    end_sample: int
    truncated: bool
    quality: Quality | None


@dataclass
class _Slot:
    start_sample: int
    end_sample: int
    speech: bool
    resolved: bool = False
    probs: np.ndarray | None = None
    tokens_in: int = 0
    tokens_kept: int = 0
    latency_ms: float = 0.0
    moments: Moments | None = None
    envelope: list[float] | None = None  # the window's waveform envelope (importance on)
    importance: dict[str, Any] | None = None  # the estimate's importance object
    quality: Quality | None = None  # the window's audio quality (quality on, speech windows)


class StreamCore:
    """One stream's state machine. See the module docstring for the policies.

    Args:
        stream_id: name of the stream (letters, digits, ``_ . : -``; one MQTT topic level).
        labels: class names in the model's output order.
        sample_rate_hz: sample rate of pushed frames; must match windower and smoother.
        windower, gate, smoother: the parts (``gate=None`` treats every window as speech).
        model_info: ``{"name", "frontend", "rev", ...}`` copied into every estimate.
        silent_estimates: also publish an estimate (``speech=false``, empty ``raw``)
            for silent windows once the first speech result is in (default True),
            so subscribers see holding or decaying scores.
        max_pending: most windows waiting in the reorder buffer (default 32).
        normalizer: the stream's feature normaliser when the model expects one: each
            speech window is requested with its current statistics, and each result's
            feature moments are folded in, in ``seq`` order, counting only the audio
            the window adds to the one before (overlapping windows are not counted twice).
        importance: attach each speech estimate's ``importance`` object (the token
            importance handed to ``on_result`` and the window's waveform envelope,
            ``streamer.core.importance``); default False.
        utterances: cut utterances and request one classification of each (see the
            module docstring); None (default) = no utterances.
        quality: attach audio-quality measures to speech estimates and utterances
            (``streamer.core.quality``); default False.
        continues: the stopped core of the same stream before a restart: ``seq``,
            audio time and counters go on from it (see the module docstring).
    """

    def __init__(
        self,
        stream_id: str,
        labels: Sequence[str],
        *,
        sample_rate_hz: int = 16000,
        windower: Windower,
        gate: Gate | None,
        smoother: Smoother,
        model_info: dict[str, Any],
        silent_estimates: bool = True,
        max_pending: int = 32,
        normalizer: StreamNormalizer | None = None,
        importance: bool = False,
        utterances: UtterancePolicy | None = None,
        quality: bool = False,
        continues: StreamCore | None = None,
    ) -> None:
        if not isinstance(stream_id, str) or not STREAM_ID_PATTERN.match(stream_id):
            raise ConfigError(
                f"stream_id {stream_id!r} is invalid: use 1-128 letters, digits or _ . : -"
            )
        if list(labels) != smoother.labels:
            raise ConfigError(f"labels {list(labels)} differ from the smoother's {smoother.labels}")
        for part, rate in (
            ("windower", windower.sample_rate_hz),
            ("smoother", smoother.sample_rate_hz),
        ):
            if rate != sample_rate_hz:
                raise ConfigError(
                    f"{part}.sample_rate_hz={rate} differs from the stream's sample_rate_hz={sample_rate_hz}"
                )
        missing = [k for k in ("name", "frontend", "rev") if k not in model_info]
        if missing:
            raise ConfigError(f"model_info lacks {missing}; give name, frontend and rev")
        if max_pending < 1:
            raise ConfigError(f"max_pending must be >= 1, got {max_pending}")
        self.stream_id = stream_id
        self.labels = list(labels)
        self.sample_rate_hz = sample_rate_hz
        self.windower = windower
        self.gate = gate
        self.smoother = smoother
        self.model_info = dict(model_info)
        self.silent_estimates = silent_estimates
        self.max_pending = max_pending
        self.normalizer = normalizer
        self.importance = importance
        self.quality = quality
        self.cutter = None if utterances is None else UtteranceCutter(utterances, sample_rate_hz)
        self._utterances: OrderedDict[int, _UtteranceSlot] = OrderedDict()
        self._next_utterance = 0
        self._norm_until_sample = 0  # audio up to here is folded into the normaliser
        self._counters = dict.fromkeys((*COUNTER_NAMES, *EXTRA_COUNTERS), 0)
        self._pending: OrderedDict[int, _Slot] = OrderedDict()
        self._first_seq = self._next_seq = 0
        self._base_sample = 0  # audio of earlier runs of this stream (restarts), in samples
        if continues is not None:
            if continues.stream_id != stream_id or not continues.stopped:
                raise ValueError("continues= takes the stopped core of the same stream")
            self._first_seq = self._next_seq = continues._next_seq
            self._next_utterance = continues._next_utterance
            self._base_sample = continues._base_sample + continues.windower.total_samples
            self._counters.update(continues._counters)
        self._state: StreamState | None = None  # None until start()
        self._stopped: bool = False
        self._announced = False  # first label published as a transition from None

    # ----------------------------------------------------------------- state
    @property
    def counters(self) -> dict[str, int]:
        """A copy of the cumulative counters."""
        return dict(self._counters)

    @property
    def stopped(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stopped

    @property
    def state(self) -> StreamState | None:
        """Current status state (None before ``start``)."""
        return self._state

    @property
    def pending(self) -> int:
        """Windows waiting for a result (or for an earlier one)."""
        return len(self._pending)

    @property
    def pending_utterances(self) -> int:
        """Utterances waiting for a result."""
        return len(self._utterances)

    def _ms(self, sample: int) -> int:
        return (self._base_sample + sample) * 1000 // self.sample_rate_hz

    def _status(
        self, state: StreamState, detail: str | None = None, at_sample: int | None = None
    ) -> StreamStatus:
        """Status at ``at_sample`` (default: all audio pushed so far)."""
        self._state = state
        sample = self.windower.total_samples if at_sample is None else at_sample
        return StreamStatus(self.stream_id, state, self._ms(sample), self.counters, detail)

    def status(self) -> StreamStatus:
        """The current status with up-to-date counters (a heartbeat; the state is unchanged)."""
        if self._state is None:
            raise RuntimeError(f"stream {self.stream_id} has not been started")
        return StreamStatus(
            self.stream_id, self._state, self._ms(self.windower.total_samples), self.counters
        )

    def start(self) -> StreamStatus:
        """Begin the stream: returns the ``online`` status."""
        if self._state is not None:
            raise RuntimeError(f"stream {self.stream_id} was already started")
        return self._status("online")

    def stop(self, error: str | None = None) -> StreamStatus:
        """End the stream: ``offline`` (or ``error`` with ``error`` as detail).

        Windows still waiting for results are counted in ``lost_results``.
        Call ``flush`` and wait for outstanding results first to lose nothing.
        """
        lost = sum(1 for s in self._pending.values() if not s.resolved) + len(self._utterances)
        if lost:
            self._counters["lost_results"] += lost
            log.warning("stream %s: stopped with %d results outstanding", self.stream_id, lost)
        self._pending.clear()
        self._utterances.clear()
        self._stopped = True
        return self._status("error" if error is not None else "offline", error)

    def count_dropped_frames(self, n: int) -> None:
        """Record ``n`` frames a source dropped before they reached ``push``."""
        self._counters["dropped_frames"] += int(n)

    # ----------------------------------------------------------------- input
    def _sanitise(self, frames: np.ndarray, out: list[InferenceRequest | Event]) -> np.ndarray:
        x = np.asarray(frames)
        if x.ndim != 1:
            raise AudioError(
                f"stream {self.stream_id}: frames must be 1-D mono, got shape {x.shape}; "
                "downmix (e.g. frames.mean(axis=1)) before push"
            )
        if x.dtype.kind in "iu":  # integer PCM: full scale maps to [-1, 1)
            half = (float(np.iinfo(x.dtype).max) + 1.0) / (1.0 if x.dtype.kind == "i" else 2.0)
            offset = 0.0 if x.dtype.kind == "i" else half
            x = (x.astype(np.float64) - offset) / half
        elif x.dtype.kind != "f":
            raise AudioError(
                f"stream {self.stream_id}: frames have dtype {x.dtype}; push float32 in [-1, 1] or int PCM"
            )
        x = x.astype(np.float32, copy=True)
        bad = ~np.isfinite(x)
        n_bad = int(bad.sum())
        if n_bad:
            x[bad] = 0.0
            first = self._counters["bad_samples"] == 0
            self._counters["bad_samples"] += n_bad
            if first:
                detail = (
                    f"replaced {n_bad} non-finite samples (NaN/Inf) with 0 at "
                    f"{self._ms(self.windower.total_samples)} ms; check the audio source. "
                    "Later ones are only counted in counters.bad_samples"
                )
                log.warning("stream %s: %s", self.stream_id, detail)
                assert self._state is not None
                out.append(self._status(self._state, detail))
        n_clip = int(np.count_nonzero(np.abs(x) > 1.0))
        if n_clip:
            self._counters["clipped_samples"] += n_clip
            np.clip(x, -1.0, 1.0, out=x)
        return x

    def push(self, frames: np.ndarray) -> list[InferenceRequest | Event]:
        """Feed audio; returns window requests and events, in order.

        Accepts 1-D float (any precision) or integer PCM (scaled to [-1, 1]);
        raises AudioError for 2-D or non-numeric input. Starts the stream
        (with its ``online`` status first in the list) if ``start`` was not called.
        """
        if self._stopped:
            raise RuntimeError(f"stream {self.stream_id} is stopped; create a new StreamCore")
        out: list[InferenceRequest | Event] = []
        if self._state is None:
            out.append(self.start())
        x = self._sanitise(frames, out)
        for window in self.windower.push(x):
            self._on_window(window, out)
        out.extend(self._drain())
        return out

    def flush(self) -> list[InferenceRequest | Event]:
        """End of input: the windower's last partial window, if any, as for ``push``;
        then the open utterance, if any."""
        if self._stopped:
            return []
        out: list[InferenceRequest | Event] = []
        if self._state is None:
            out.append(self.start())
        for window in self.windower.flush():
            self._on_window(window, out)
        if self.cutter is not None:
            for utterance in self.cutter.flush():
                self._request_utterance(utterance, out)
        out.extend(self._drain())
        return out

    def _on_window(self, w: Window, out: list[InferenceRequest | Event]) -> None:
        self._counters["windows"] += 1
        seq = self._next_seq
        self._next_seq += 1
        decision: GateDecision | None = None if self.gate is None else self.gate.decide(w.samples)
        speech = True if decision is None else decision.speech
        state: StreamState = "speech" if speech else "silence"
        if state != self._state:
            out.append(self._status(state, at_sample=w.end_sample))
        self._pending[seq] = _Slot(
            w.start_sample,
            w.end_sample,
            speech,
            resolved=not speech,
            envelope=envelope(w.samples) if speech and self.importance else None,
            quality=measure(w.samples, self.sample_rate_hz) if speech and self.quality else None,
        )
        if speech:
            out.append(
                WindowRequest(
                    self.stream_id,
                    seq,
                    w.start_sample,
                    w.end_sample,
                    w.samples,
                    self.sample_rate_hz,
                    None if self.normalizer is None else self.normalizer.stats(),
                )
            )
        else:
            self._counters["skipped_silence"] += 1
        if self.cutter is not None:
            for utterance in self.cutter.feed(w, decision):
                self._request_utterance(utterance, out)
        while len(self._pending) > self.max_pending:
            out.extend(self._drain())
            if len(self._pending) <= self.max_pending:
                break
            old_seq = next(iter(self._pending))  # unanswered: drain stopped there
            del self._pending[old_seq]
            self._counters["lost_results"] += 1
            log.warning(
                "stream %s: gave up waiting for the result of window %d", self.stream_id, old_seq
            )

    def _request_utterance(self, u: Utterance, out: list[InferenceRequest | Event]) -> None:
        seq = self._next_utterance
        self._next_utterance += 1
        quality = measure(u.samples, self.sample_rate_hz) if self.quality else None
        self._utterances[seq] = _UtteranceSlot(u.start_sample, u.end_sample, u.truncated, quality)
        out.append(
            UtteranceRequest(
                self.stream_id,
                seq,
                u.start_sample,
                u.end_sample,
                u.samples,
                self.sample_rate_hz,
                None if self.normalizer is None else self.normalizer.stats(),
                u.truncated,
            )
        )
        while len(self._utterances) > self.max_pending:
            old, _ = self._utterances.popitem(last=False)
            self._counters["lost_results"] += 1
            log.warning("stream %s: gave up waiting for utterance %d", self.stream_id, old)

    # ---------------------------------------------------------------- results
    def _slot_for(self, seq: int) -> _Slot | None:
        if not self._first_seq <= seq < self._next_seq:
            raise ValueError(f"stream {self.stream_id}: no window with seq {seq} was requested")
        slot = self._pending.get(seq)
        if slot is None or slot.resolved:
            self._counters["late_results"] += 1
            log.info(
                "stream %s: dropped late or duplicate answer for window %d", self.stream_id, seq
            )
            return None
        return slot

    def on_result(
        self,
        seq: int,
        probs: np.ndarray,
        tokens_in: int,
        tokens_kept: int,
        latency_ms: float,
        moments: Moments | None = None,
        importance: TokenImportance | None = None,
    ) -> list[Event]:
        """The model's probabilities for window ``seq``; returns the events now due.

        ``moments`` (the window's raw feature moments) feed the stream's
        normaliser when the result is applied. ``importance`` (the window's
        token importance) goes into the estimate when the core was built with
        ``importance=True``.

        Invalid probabilities (wrong shape, non-finite, not summing to 1) are
        counted in ``bad_results`` (the first one also reported in a status
        ``detail``, and logged each time); they never reach the smoother.
        """
        slot = self._slot_for(seq)
        if slot is None:
            return []
        slot.resolved = True
        out: list[Event] = []
        try:
            slot.probs = self.smoother.check_probs(probs)
        except ValueError as e:
            first = self._counters["bad_results"] == 0
            self._counters["bad_results"] += 1
            log.error("stream %s: window %d: %s", self.stream_id, seq, e)
            if first:
                assert self._state is not None
                detail = f"model output for window {seq} rejected: {e}; later ones are only counted"
                out.append(self._status(self._state, detail))
        slot.tokens_in, slot.tokens_kept = int(tokens_in), int(tokens_kept)
        slot.latency_ms = float(latency_ms)
        slot.moments = moments
        if importance is not None and slot.envelope is not None:
            slot.importance = summarise(importance, slot.envelope)
        return out + self._drain()

    def on_skipped(self, seq: int, reason: str = "stale") -> list[Event]:
        """The worker did not classify window ``seq``.

        ``reason="stale"`` counts in ``skipped_stale``; anything else (e.g.
        ``"error"``) in ``inference_errors``. Returns the events now due.
        """
        slot = self._slot_for(seq)
        if slot is None:
            return []
        slot.resolved = True
        self._counters["skipped_stale" if reason == "stale" else "inference_errors"] += 1
        return self._drain()

    def _utterance_slot(self, seq: int) -> _UtteranceSlot | None:
        if not 0 <= seq < self._next_utterance:
            raise ValueError(f"stream {self.stream_id}: no utterance with seq {seq} was requested")
        slot = self._utterances.pop(seq, None)
        if slot is None:
            self._counters["late_results"] += 1
            log.info(
                "stream %s: dropped late or duplicate answer for utterance %d", self.stream_id, seq
            )
        return slot

    def on_utterance_result(
        self,
        seq: int,
        probs: np.ndarray,
        tokens_in: int,
        tokens_kept: int,
        latency_ms: float,
    ) -> list[Event]:
        """The model's probabilities for utterance ``seq``: its ``emotion.utterance`` event
        (or, for invalid probabilities, counted in ``bad_results`` as for windows)."""
        slot = self._utterance_slot(seq)
        if slot is None:
            return []
        try:
            checked = self.smoother.check_probs(probs)
        except ValueError as e:
            first = self._counters["bad_results"] == 0
            self._counters["bad_results"] += 1
            log.error("stream %s: utterance %d: %s", self.stream_id, seq, e)
            if not first:
                return []
            assert self._state is not None
            detail = f"model output for utterance {seq} rejected: {e}; later ones are only counted"
            return [self._status(self._state, detail)]
        scores = dict(zip(self.labels, (float(p) for p in checked), strict=True))
        best = int(np.argmax(checked))
        arousal, valence = arousal_valence(scores)
        self._counters["utterances"] += 1
        return [
            EmotionUtterance(
                stream_id=self.stream_id,
                seq=seq,
                audio_start_ms=self._ms(slot.start_sample),
                audio_end_ms=self._ms(slot.end_sample),
                label=self.labels[best],
                confidence=float(checked[best]),
                scores=scores,
                arousal=arousal,
                valence=valence,
                tokens_in=int(tokens_in),
                tokens_kept=int(tokens_kept),
                latency_ms=float(latency_ms),
                model=self.model_info,
                truncated=slot.truncated,
                quality=slot.quality,
            )
        ]

    def on_utterance_skipped(self, seq: int, reason: str = "stale") -> list[Event]:
        """The worker did not classify utterance ``seq``: ``reason="stale"`` counts in
        ``skipped_utterances``, anything else in ``inference_errors``."""
        if self._utterance_slot(seq) is not None:
            self._counters["skipped_utterances" if reason == "stale" else "inference_errors"] += 1
        return []

    def _drain(self) -> list[Event]:
        out: list[Event] = []
        while self._pending:
            seq, slot = next(iter(self._pending.items()))
            if not slot.resolved:
                break
            del self._pending[seq]
            if slot.speech:
                if slot.probs is None:
                    continue  # skipped or rejected: already counted
                self._counters["inferred"] += 1
                self._fold(slot)
                upd = self.smoother.apply(slot.probs, slot.end_sample)  # checked in on_result
                raw = dict(zip(self.labels, (float(p) for p in slot.probs), strict=True))
            else:
                was_started = self.smoother.started
                upd = self.smoother.silence(slot.end_sample)
                if not (was_started and self.silent_estimates):
                    continue
                raw = {}
            out.append(self._estimate(seq, slot, upd, raw))
            if not self._announced:  # the first label: a transition from nothing
                self._announced = True
                out.append(
                    EmotionTransition(
                        self.stream_id,
                        seq,
                        self._ms(slot.end_sample),
                        None,
                        upd.label,
                        upd.confidence,
                    )
                )
            elif upd.transition is not None:
                out.append(
                    EmotionTransition(
                        self.stream_id,
                        seq,
                        self._ms(slot.end_sample),
                        *upd.transition,
                        upd.confidence,
                    )
                )
        return out

    def _fold(self, slot: _Slot) -> None:
        """Fold a speech window's feature moments into the normaliser, for the audio it adds."""
        if self.normalizer is None or slot.moments is None:
            return
        span = slot.end_sample - slot.start_sample
        new = slot.end_sample - max(slot.start_sample, self._norm_until_sample)
        if span <= 0 or new <= 0:
            return
        m = slot.moments
        self.normalizer.update(Moments(m.count * new / span, m.mean, m.second))
        self._norm_until_sample = slot.end_sample

    def _estimate(
        self, seq: int, slot: _Slot, upd: SmootherUpdate, raw: dict[str, float]
    ) -> EmotionEstimate:
        arousal, valence = arousal_valence(upd.scores)
        return EmotionEstimate(
            stream_id=self.stream_id,
            seq=seq,
            audio_start_ms=self._ms(slot.start_sample),
            audio_end_ms=self._ms(slot.end_sample),
            speech=slot.speech,
            label=upd.label,
            confidence=upd.confidence,
            scores=upd.scores,
            raw=raw,
            arousal=arousal,
            valence=valence,
            tokens_in=slot.tokens_in,
            tokens_kept=slot.tokens_kept,
            latency_ms=slot.latency_ms,
            model=self.model_info,
            importance=slot.importance,
            quality=slot.quality,
        )
