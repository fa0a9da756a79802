"""The inference worker: batches across streams without changing results, evicts
the oldest when full, reports loading errors, never runs on the event loop."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from dropformer.errors import CheckpointError
from streamer.core.stream import WindowRequest
from streamer.engine import Engine
from streamer.worker import InferenceWorker

DATA = Path(__file__).resolve().parents[1] / "data" / "emodb"


def requests() -> list[WindowRequest]:
    out = []
    for i, name in enumerate(["03a01Wa.wav", "03a01Fa.wav", "03a02Ta.wav"]):
        audio, _ = sf.read(DATA / name, dtype="float32")
        for j, n in enumerate((16000, 24000)):  # windows of different lengths
            out.append(WindowRequest(f"s{i}", j, 0, n, audio[:n]))
    return out


async def test_batches_across_streams_with_identical_results(tiny_checkpoint: Path) -> None:
    engine = Engine.load(str(tiny_checkpoint), device="cpu")
    alone = [engine.run([r.samples]).probs[0] for r in requests()]
    threads: set[str] = set()
    original = engine.run

    def spy(waves: list[np.ndarray], norms=None):  # type: ignore[no-untyped-def]
        threads.add(threading.current_thread().name)
        return original(waves, norms)

    engine.run = spy  # type: ignore[method-assign]
    async with InferenceWorker(lambda: engine, max_batch=8, max_wait_ms=200) as worker:
        outcomes = await asyncio.gather(*(worker.infer(r, deadline_s=None) for r in requests()))
    assert max(o.batch_size for o in outcomes) > 1
    assert threads == {"inference-worker"}
    for o, ref in zip(outcomes, alone):
        assert o.skipped is None and o.probs is not None
        np.testing.assert_allclose(o.probs, ref, atol=1e-5)
        assert o.tokens_kept < o.tokens_in


async def test_full_queue_evicts_oldest_as_stale(tiny_checkpoint: Path) -> None:
    engine = Engine.load(str(tiny_checkpoint), device="cpu")
    gate = threading.Event()
    original = engine.run

    def blocked(waves: list[np.ndarray], norms=None):  # type: ignore[no-untyped-def]
        gate.wait(10)
        return original(waves, norms)

    engine.run = blocked  # type: ignore[method-assign]
    reqs = requests()
    async with InferenceWorker(lambda: engine, max_batch=1, max_wait_ms=0, queue_size=2) as worker:
        first = asyncio.create_task(worker.infer(reqs[0], deadline_s=None))
        await asyncio.sleep(0.2)  # the worker is now busy with the first request
        rest = [asyncio.create_task(worker.infer(r, deadline_s=None)) for r in reqs[1:5]]
        await asyncio.sleep(0.1)
        gate.set()
        outcomes = await asyncio.gather(first, *rest)
        assert worker.stats.evicted == 2
    assert [o.skipped for o in outcomes] == [None, "stale", "stale", None, None]


async def test_loading_error_surfaces_at_start(tmp_path: Path) -> None:
    worker = InferenceWorker(lambda: Engine.load(str(tmp_path), device="cpu"))
    with pytest.raises(CheckpointError, match="lacks config.json"):
        async with worker:
            pass


async def test_batch_failure_answers_every_caller(tiny_checkpoint: Path) -> None:
    engine = Engine.load(str(tiny_checkpoint), device="cpu")
    calls = 0
    original = engine.run

    def flaky(waves: list[np.ndarray], norms=None):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("simulated device failure")
        return original(waves, norms)

    engine.run = flaky  # type: ignore[method-assign]
    reqs = requests()
    async with InferenceWorker(lambda: engine, max_batch=1, max_wait_ms=0) as worker:
        bad = await worker.infer(reqs[0], deadline_s=None)
        good = await worker.infer(reqs[1], deadline_s=None)
        assert worker.stats.errors == 1
    assert bad.skipped == "error" and good.skipped is None
