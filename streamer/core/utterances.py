"""Cut a stream into utterances from the speech gate's verdicts (sans-I/O, numpy only).

:class:`UtteranceCutter` sees each analysis window once, with its gate
decision, and looks only at the audio the window adds to the ones before
(with overlapping windows, its last hop). Where the gate judged frames
(``GateDecision.frame_speech``: 30 ms for the energy gate, 32 ms for Silero)
an utterance starts at its first speech frame and ends at its last one, once
``end_silence_s`` of non-speech has followed (or at :meth:`UtteranceCutter.flush`,
the end of the stream). A gate without frame verdicts (or no gate) judges each
window's new audio as a whole. Audio no window covers (``hop_s > window_s``)
ends the utterance too.

Memory is bounded: only the open utterance's audio is kept, and of it no more
than its last ``max_s`` seconds before the last speech frame, plus the
trailing non-speech (under ``end_silence_s``) and one window's new audio. An
utterance longer than ``max_s`` keeps its last ``max_s`` seconds and is marked
``truncated``; one shorter than ``min_s`` is dropped (counted in ``short``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from streamer.core.gate import GateDecision
from streamer.core.windower import Window


@dataclass(frozen=True)
class UtterancePolicy:
    """How utterances are cut (seconds of audio).

    ``max_s``: longest audio one utterance is classified on (a longer one keeps
    its last ``max_s`` and is marked truncated); ``min_s``: shorter ones are
    dropped; ``end_silence_s``: non-speech that ends an utterance.
    """

    max_s: float = 10.0
    min_s: float = 0.5
    end_silence_s: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.min_s <= self.max_s:
            raise ValueError(
                f"utterance min_s={self.min_s} and max_s={self.max_s} need 0 < min_s <= max_s"
            )
        if self.end_silence_s <= 0:
            raise ValueError(f"utterance end_silence_s={self.end_silence_s} must be > 0")


@dataclass(frozen=True)
class Utterance:
    """A closed utterance: the audio ``[start_sample, end_sample)`` to classify."""

    start_sample: int
    end_sample: int
    samples: np.ndarray = field(repr=False)
    truncated: bool = False
    """True when the utterance began before ``start_sample`` (it was longer than ``max_s``)."""


class UtteranceCutter:
    """Stateful utterance segmentation; see the module docstring."""

    def __init__(self, policy: UtterancePolicy, sample_rate_hz: int = 16000) -> None:
        self.policy = policy
        self.max_samples = round(policy.max_s * sample_rate_hz)
        self.min_samples = max(1, round(policy.min_s * sample_rate_hz))
        self.end_silence_samples = max(1, round(policy.end_silence_s * sample_rate_hz))
        self.short = 0
        """Utterances dropped as shorter than ``min_s``."""
        self._covered = 0  # audio up to this sample has been judged
        self._start: int | None = None  # first speech sample of the open utterance
        self._speech_end = 0  # end of its last speech frame
        self._pieces: list[np.ndarray] = []  # its audio from _buf_start, contiguous
        self._buf_start = 0
        self._buf_len = 0

    @property
    def buffered_samples(self) -> int:
        """Audio held right now (bounded, see the module docstring)."""
        return self._buf_len

    @property
    def open(self) -> bool:
        """Whether an utterance is running."""
        return self._start is not None

    def feed(self, window: Window, decision: GateDecision | None) -> list[Utterance]:
        """Judge the audio ``window`` adds, with the gate's ``decision`` on it (``None``: no
        gate, all speech); returns the utterances that ended."""
        out: list[Utterance] = []
        begin = max(window.start_sample, self._covered)
        if window.end_sample <= begin:
            return out
        if begin > self._covered:  # audio no window judged: the utterance cannot go on
            self._close(out)
        for start, end, speech in self._runs(window, decision, begin):
            a = start - window.start_sample
            self._take(start, window.samples[a : a + (end - start)], speech, out)
        self._covered = window.end_sample
        return out

    def flush(self) -> list[Utterance]:
        """End of the stream: the open utterance, if long enough."""
        out: list[Utterance] = []
        self._close(out)
        return out

    # ------------------------------------------------------------- internals
    @staticmethod
    def _runs(
        window: Window, decision: GateDecision | None, begin: int
    ) -> list[tuple[int, int, bool]]:
        """``(start, end, speech)`` runs of equal verdicts covering ``[begin, window end)``."""
        end = window.end_sample
        flags = None if decision is None else decision.frame_speech
        if decision is None or flags is None or decision.frame_samples <= 0 or flags.size == 0:
            return [(begin, end, True if decision is None else bool(decision.speech))]
        frame = decision.frame_samples
        first = max(0, (begin - window.start_sample) // frame)
        runs: list[tuple[int, int, bool]] = []
        for i in range(first, flags.size):
            a = max(begin, window.start_sample + i * frame)
            b = min(end, window.start_sample + (i + 1) * frame)
            if b <= a:
                continue
            speech = bool(flags[i])
            if runs and runs[-1][2] == speech and runs[-1][1] == a:
                runs[-1] = (runs[-1][0], b, speech)
            else:
                runs.append((a, b, speech))
        if runs and runs[-1][1] < end:  # frames that do not reach the end: the rest is alike
            last = runs[-1]
            runs[-1] = (last[0], end, last[2])
        return runs or [(begin, end, bool(decision.speech))]

    def _take(self, start: int, audio: np.ndarray, speech: bool, out: list[Utterance]) -> None:
        end = start + audio.size
        if speech:
            if self._start is None:
                self._start, self._buf_start = start, start
            self._append(audio)
            self._speech_end = end
            self._trim()
        elif self._start is not None:
            if end - self._speech_end >= self.end_silence_samples:
                self._close(out)
            else:
                self._append(audio)

    def _append(self, audio: np.ndarray) -> None:
        self._pieces.append(audio.copy())  # a view would keep its whole window alive
        self._buf_len += audio.size

    def _trim(self) -> None:
        """Drop audio before the last ``max_samples`` up to the last speech frame."""
        keep_from = self._speech_end - self.max_samples
        drop = keep_from - self._buf_start
        while drop > 0 and self._pieces:
            head = self._pieces[0]
            if head.size <= drop:
                self._pieces.pop(0)
                cut = head.size
            else:
                self._pieces[0] = head[drop:]
                cut = drop
            drop -= cut
            self._buf_start += cut
            self._buf_len -= cut

    def _close(self, out: list[Utterance]) -> None:
        start = self._start
        if start is None:
            return
        begin = max(start, self._speech_end - self.max_samples, self._buf_start)
        if self._speech_end - start < self.min_samples:
            self.short += 1
        else:
            audio = np.concatenate(self._pieces) if len(self._pieces) > 1 else self._pieces[0]
            a = begin - self._buf_start
            samples = np.array(audio[a : a + (self._speech_end - begin)], dtype=np.float32)
            out.append(Utterance(begin, self._speech_end, samples, truncated=begin > start))
        self._start = None
        self._pieces = []
        self._buf_len = 0
