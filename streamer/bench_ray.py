"""``emotion-monitor bench --parts ray``: the Ray Serve tier against the local worker, one run.

Windows of real speech (3 s, cut from the WAV files of ``audio_dir``) are
sent closed-loop: each gateway keeps ``concurrency`` windows in flight (as
that many streams whose windows are all due at once would) for ``step_s``
seconds. Measured: answered windows per second and the latency of each
answer (``infer`` called to outcome received), p50 and p99.

- baseline: the in-process :class:`~streamer.worker.InferenceWorker`, one
  gateway, same closed loop;
- the tier: a local Ray started here, the application deployed with 1 and
  2 replicas (``replica_counts``), and 1 and 2 gateway *processes*
  (``gateway_counts``; ``python -m streamer.bench_ray``), each a Ray driver
  using :class:`~streamer.ray_backend.RayServeBackend` as the daemon does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from streamer.core.stream import WindowRequest
from streamer.worker import InferenceBackend

log = logging.getLogger(__name__)
WINDOW_SAMPLES = 48000


@dataclass
class RayBenchConfig:
    audio: list[Path]
    checkpoint: str
    replica_counts: list[int]
    gateway_counts: list[int]
    concurrency: int
    step_s: float
    max_batch: int
    max_wait_ms: float
    threads: int


def speech_windows(audio: list[Path], n: int = 64) -> list[np.ndarray]:
    """Up to ``n`` 3 s windows of real speech (shorter files are repeated to 3 s)."""
    out: list[np.ndarray] = []
    for path in audio:
        wave, rate = sf.read(path, dtype="float32", always_2d=True)
        if rate != 16000:
            continue
        mono = wave.mean(axis=1)
        reps = int(np.ceil(WINDOW_SAMPLES / max(len(mono), 1)))
        out.append(np.tile(mono, reps)[:WINDOW_SAMPLES].copy())
        if len(out) >= n:
            break
    if not out:
        raise ValueError("no 16 kHz WAV files among the audio given")
    return out


async def closed_loop(
    backend: InferenceBackend, windows: list[np.ndarray], concurrency: int, step_s: float
) -> dict[str, Any]:
    """``concurrency`` senders, each sending its next window when the last is answered."""
    latencies: list[float] = []
    skipped = 0
    end = time.monotonic() + step_s

    async def sender(k: int) -> None:
        nonlocal skipped
        seq = 0
        while time.monotonic() < end:
            samples = windows[(k * 7 + seq) % len(windows)]
            request = WindowRequest(f"b{k}", seq, 0, len(samples), samples)
            t0 = time.perf_counter()
            outcome = await backend.infer(request, deadline_s=None)
            if outcome.probs is None:
                skipped += 1
            else:
                latencies.append((time.perf_counter() - t0) * 1000.0)
            seq += 1

    t0, cpu0 = time.monotonic(), time.process_time()
    await asyncio.gather(*(sender(k) for k in range(concurrency)))
    elapsed, cpu_s = time.monotonic() - t0, time.process_time() - cpu0
    return {"latencies_ms": latencies, "elapsed_s": elapsed, "skipped": skipped, "cpu_s": cpu_s}


def summary(what: str, results: list[dict[str, Any]], **notes: Any) -> dict[str, Any]:
    lat = [x for r in results for x in r["latencies_ms"]]
    elapsed = max(r["elapsed_s"] for r in results)
    return {
        "what": what,
        "median_ms": float(np.percentile(lat, 50)) if lat else float("nan"),
        "p99_ms": float(np.percentile(lat, 99)) if lat else float("nan"),
        "n": len(lat),
        "windows_per_s": round(len(lat) / elapsed, 1),
        "skipped": sum(r["skipped"] for r in results),
        # CPU time of the gateway process(es) per answered window (with the local worker:
        # inference included); the load-independent cost of the gateway's side
        "gateway_cpu_ms_per_window": round(
            1000.0 * sum(r["cpu_s"] for r in results) / max(len(lat), 1), 2
        ),
        **notes,
    }


async def bench_local(cfg: RayBenchConfig, windows: list[np.ndarray]) -> dict[str, Any]:
    from streamer.engine import Engine
    from streamer.worker import InferenceWorker

    def load() -> Engine:
        engine = Engine.load(cfg.checkpoint, device="cpu", threads=cfg.threads)
        engine.warm_up(WINDOW_SAMPLES, (1, cfg.max_batch))
        return engine

    worker = InferenceWorker(load, max_batch=cfg.max_batch, max_wait_ms=cfg.max_wait_ms)
    async with worker:
        await closed_loop(worker, windows, cfg.concurrency, 2.0)  # warm
        result = await closed_loop(worker, windows, cfg.concurrency, cfg.step_s)
    return summary(
        "local worker (in-process), 1 gateway",
        [result],
        in_flight=cfg.concurrency,
    )


def run(cfg: RayBenchConfig) -> list[dict[str, Any]]:
    """Every row of the ray part (the local baseline first)."""
    from streamer.ray_backend import import_ray

    ray, serve = import_ray()
    from streamer import serve_app
    from streamer.config import ModelConfig, RayConfig, WorkerConfig

    windows = speech_windows(cfg.audio)
    rows = [asyncio.run(bench_local(cfg, windows))]
    log.info("%s", rows[-1])
    cores = os.cpu_count() or 1
    ray.init(num_cpus=cores, include_dashboard=False, logging_level=logging.WARNING)
    try:
        gcs = str(ray.get_runtime_context().gcs_address)
        for replicas in cfg.replica_counts:
            app = f"bench-{replicas}"
            worker = WorkerConfig(
                max_batch=cfg.max_batch,
                max_wait_ms=cfg.max_wait_ms,
                ray=RayConfig(
                    app_name=app,
                    min_replicas=replicas,
                    max_replicas=replicas,
                    num_cpus=min(1.0, cores / max(cfg.replica_counts)),
                    max_ongoing_requests=max(32, 2 * cfg.max_batch),
                ),
            )
            model = ModelConfig(checkpoint=cfg.checkpoint, device="cpu", threads=cfg.threads)
            serve_app.deploy(model, worker, WINDOW_SAMPLES)
            for gateways in cfg.gateway_counts:
                results = asyncio.run(_gateways(cfg, gcs, app, gateways))
                rows.append(
                    summary(
                        f"Ray Serve, {replicas} replica(s), {gateways} gateway process(es)",
                        results,
                        in_flight=cfg.concurrency * gateways,
                        batch_size_mean=round(
                            float(np.mean([r["batch_size_mean"] or 0 for r in results])), 2
                        ),
                        replica_compute_ms_median=round(
                            float(np.median([r["compute_ms_median"] or 0 for r in results])), 1
                        ),
                    )
                )
                log.info("%s", rows[-1])
            serve.delete(app)
    finally:
        serve.shutdown()
        ray.shutdown()
    return rows


async def _gateways(cfg: RayBenchConfig, gcs: str, app: str, n: int) -> list[dict[str, Any]]:
    """Start ``n`` gateway processes together; each waits for a common start time."""
    start_at = time.time() + 15.0  # every process is connected and warm by then
    args = [
        sys.executable,
        "-m",
        "streamer.bench_ray",
        "--address",
        gcs,
        "--app",
        app,
        "--start-at",
        str(start_at),
        "--step-s",
        str(cfg.step_s),
        "--concurrency",
        str(cfg.concurrency),
        *[str(p) for p in cfg.audio[:64]],
    ]
    procs = [
        await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE)
        for _ in range(n)
    ]
    outs = await asyncio.gather(*(p.communicate() for p in procs))
    results = []
    for proc, (out, _) in zip(procs, outs):
        if proc.returncode != 0:
            raise RuntimeError(f"a benchmark gateway failed (exit {proc.returncode})")
        results.append(json.loads(out.decode().strip().splitlines()[-1]))
    return results


async def _gateway(args: argparse.Namespace) -> dict[str, Any]:
    """One gateway process: connect, wait for the common start, run the closed loop."""
    from streamer.config import RayConfig
    from streamer.ray_backend import RayServeBackend

    windows = speech_windows([Path(p) for p in args.audio])
    backend = RayServeBackend(
        RayConfig(address=args.address, app_name=args.app), queue_size=1024, importance=False
    )
    async with backend:
        await closed_loop(backend, windows, args.concurrency, 1.0)  # warm the route
        await asyncio.sleep(max(0.0, args.start_at - time.time()))
        result = await closed_loop(backend, windows, args.concurrency, args.step_s)
        stats = backend.stats.as_dict()
        result["batch_size_mean"] = stats["batch_size_mean"]
        result["compute_ms_median"] = stats["compute_ms_median"]  # per batch, on the replica
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="one gateway of `emotion-monitor bench --parts ray`"
    )
    parser.add_argument("--address", required=True)
    parser.add_argument("--app", required=True)
    parser.add_argument("--start-at", type=float, required=True)
    parser.add_argument("--step-s", type=float, required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("audio", nargs="+")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    result = asyncio.run(_gateway(args))
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
