"""Per-utterance results live: real speech through the core, the inference worker and the
daemon; each utterance's scores are the model's on that audio alone."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from websockets.asyncio.client import connect

from dropformer import DropFormer, FrontendConfig, preset, save_checkpoint
from dropformer.configio import validate
from dropformer.normalization import StreamNormConfig
from streamer.config import DaemonConfig
from streamer.core.events import EmotionUtterance, validate_event
from streamer.core.gate import EnergyGate
from streamer.core.smoother import Smoother
from streamer.core.stream import StreamCore, UtteranceRequest, WindowRequest
from streamer.core.utterances import UtterancePolicy
from streamer.core.windower import Windower
from streamer.daemon import Daemon
from streamer.engine import Engine
from streamer.worker import InferenceWorker

SR = 16000
EMODB = Path(__file__).resolve().parents[1] / "data" / "emodb"
LABELS = ["neutral", "happy", "angry", "sad"]


def two_utterances() -> np.ndarray:
    a, _ = sf.read(EMODB / "03a01Fa.wav", dtype="float32")
    b, _ = sf.read(EMODB / "16a02Tc.wav", dtype="float32")
    gap = np.zeros(SR, dtype=np.float32)
    return np.concatenate([gap, a, gap, b, gap, gap])


def stream_norm_checkpoint(folder: Path) -> Path:
    torch.manual_seed(0)
    model = DropFormer(
        preset("dropformer", input_dim=80, d_model=32, num_heads=2, ffn_dim=64, head_hidden=(32,))
    )
    return save_checkpoint(
        folder,
        model,
        frontend_config=FrontendConfig(kind="logmel", normalize="none"),
        labels=LABELS,
        stream_norm=StreamNormConfig(kind="stream", prior_s=1.0),
        norm_prior=(np.full(80, -8.0), np.full(80, 9.0)),
        temperature=1.5,
    )  # type: ignore[arg-type]


def make_core(engine: Engine) -> StreamCore:
    return StreamCore(
        "s",
        LABELS,
        windower=Windower(SR, window_s=3.0, hop_s=1.0),
        gate=EnergyGate(),
        smoother=Smoother(LABELS),
        model_info=engine.info,
        normalizer=engine.new_normalizer(),
        utterances=UtterancePolicy(),
        quality=True,
    )


async def test_utterance_scores_equal_the_model_on_that_audio_alone(tmp_path: Path) -> None:
    engine = Engine.load(str(stream_norm_checkpoint(tmp_path / "ckpt")), device="cpu")
    audio = two_utterances()
    blocks = [audio[i : i + 4000] for i in range(0, audio.size, 4000)]
    # 1. everything at once: windows and utterances of other lengths meet in the worker's
    # batches, and each answer is the model's on that audio alone
    core = make_core(engine)
    items = [x for b in blocks for x in core.push(b)] + core.flush()
    reqs = [x for x in items if isinstance(x, (WindowRequest, UtteranceRequest))]
    assert sum(isinstance(r, UtteranceRequest) for r in reqs) == 2
    async with InferenceWorker(lambda: engine, max_batch=16, max_wait_ms=300) as worker:
        outcomes = await asyncio.gather(*(worker.infer(r, deadline_s=None) for r in reqs))
        assert max(o.batch_size for o in outcomes) > 1
        for req, o in zip(reqs, outcomes, strict=True):
            alone = engine.run([req.samples], [req.norm]).probs[0]
            assert o.probs is not None
            np.testing.assert_allclose(o.probs, alone, atol=1e-5)
    # 2. as the daemon runs a file: each answer applied before the next block, so an
    # utterance is normalised with the statistics its stream has gathered by then
    async with InferenceWorker(lambda: engine, max_wait_ms=0) as worker:
        core = make_core(engine)
        assert core.normalizer is not None
        got: list[tuple[UtteranceRequest, EmotionUtterance]] = []
        for block in [*blocks, None]:
            out = core.push(block) if block is not None else core.flush()
            for req in out:
                if isinstance(req, WindowRequest):
                    o = await worker.infer(req, deadline_s=None)
                    assert o.probs is not None
                    core.on_result(req.seq, o.probs, o.tokens_in, o.tokens_kept, 5.0, o.moments)
                elif isinstance(req, UtteranceRequest):
                    o = await worker.infer(req, deadline_s=None)
                    assert o.probs is not None
                    frames = core.normalizer.frames
                    (ev,) = core.on_utterance_result(
                        req.seq, o.probs, o.tokens_in, o.tokens_kept, 9.0
                    )
                    assert core.normalizer.frames == frames  # not folded in again
                    assert isinstance(ev, EmotionUtterance)
                    got.append((req, ev))
    assert len(got) == 2
    prior = engine.new_normalizer()
    assert prior is not None
    for req, ev in got:
        assert req.norm is not None and not np.allclose(req.norm[0], prior.stats()[0])
        alone = engine.run([req.samples], [req.norm]).probs[0]
        np.testing.assert_allclose([ev.scores[k] for k in LABELS], alone, atol=1e-5)
        assert ev.label == LABELS[int(np.argmax(alone))] and ev.quality is not None
        validate_event(ev.to_dict())


async def test_daemon_publishes_utterances_before_the_final_status(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    audio = two_utterances()
    wav = tmp_path / "two.wav"
    sf.write(wav, audio, SR)
    cfg = validate(
        DaemonConfig,
        {
            "model": {"checkpoint": str(tiny_checkpoint)},
            "streams": [{"id": "talk", "source": {"path": str(wav), "realtime": False}}],
            "publish": {
                "websocket": {"port": 0},
                "jsonl": {"enabled": True, "path": str(tmp_path / "events.jsonl")},
            },
        },
    )
    live: list[dict[str, Any]] = []
    async with Daemon(cfg) as daemon:
        url = f"ws://127.0.0.1:{daemon.websocket.port}/ws"

        async def client() -> None:
            async with connect(url) as ws:
                async for msg in ws:
                    live.append(json.loads(msg))
                    if live[-1].get("state") == "offline":
                        return

        task = asyncio.create_task(client())
        await asyncio.sleep(0.3)
        await asyncio.wait_for(daemon.run(), 60)
        await asyncio.wait_for(task, 10)
        async with connect(url) as late:
            hello = json.loads(await late.recv())
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    for ev in (*events, *live, hello):
        validate_event(ev) if ev["type"] != "hello" else None
    utts = [e for e in events if e["type"] == "emotion.utterance"]
    assert len(utts) == 2 and [u["seq"] for u in utts] == [0, 1]
    assert [u for u in live if u["type"] == "emotion.utterance"] == utts
    assert hello["utterances"]["talk"] == utts  # a late dashboard sees the recent ones
    final = events[-1]
    assert final["type"] == "stream.status" and final["state"] == "offline"
    assert final["counters"]["utterances"] == 2 and final["counters"]["skipped_utterances"] == 0
    engine = Engine.load(str(tiny_checkpoint), device="cpu")
    a_end = SR + sf.info(EMODB / "03a01Fa.wav").frames
    for u, (lo, hi) in zip(utts, [(SR, a_end), (a_end + SR, audio.size - 2 * SR)], strict=True):
        assert abs(u["audio_start_ms"] - lo * 1000 // SR) < 200
        assert abs(u["audio_end_ms"] - hi * 1000 // SR) < 200
        assert u["truncated"] is False and u["quality"]["telephone_band"] is False
        samples = audio[u["audio_start_ms"] * 16 : u["audio_end_ms"] * 16]  # frame-aligned
        alone = engine.run([samples]).probs[0]
        np.testing.assert_allclose([u["scores"][k] for k in LABELS], alone, atol=1e-4)
    speech = [e for e in events if e["type"] == "emotion.estimate" and e["speech"]]
    assert speech and all("quality" in e for e in speech)
