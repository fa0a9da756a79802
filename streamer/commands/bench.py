"""``emotion-monitor bench``: speed and latency figures with same-run baselines."""

from __future__ import annotations

import argparse
import json
import logging
import platform
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from dropformer.configio import StrictModel, validate
from dropformer.errors import ConfigError

HELP = "measure inference time and audio-to-publish latency"
SET_EXAMPLE = "threads=2"
log = logging.getLogger(__name__)


class BenchConfig(StrictModel):
    parts: list[str] = Field(default_factory=lambda: ["head", "window", "latency"])
    """Which benchmarks: head, window, model, rss, wavlm (WavLM-Large live: naive baseline vs the monitor;
    streamer/bench_live.py), latency, ingest (concurrent call legs; streamer/bench_ingest.py), ray (the
    Ray Serve tier next to the local worker; streamer/bench_ray.py)."""
    device: str = "auto"
    """auto | cpu | cuda."""
    threads: int = Field(1, ge=1)
    """torch CPU threads (the daemon's default is 1)."""
    repeats: int = Field(50, ge=1)
    """Timed calls per measurement (after 3 warm-up calls)."""
    checkpoint: str | None = None
    """Model for window/latency; null = the daemon's default model."""
    audio_dir: str | None = None
    """Folder of WAV files for the latency run; null = the bundled demo audio."""
    streams: int = Field(4, ge=1)
    """Concurrent streams in the loaded latency run (the baseline is 1 stream)."""
    duration_s: float = Field(30.0, gt=0)
    """Length of each latency run in seconds."""
    out: str | None = None
    """Also write the results as JSON to this file."""
    protocol: Literal["twilio", "ingest"] = "twilio"
    """ingest part: legs as Twilio Media Streams (20 ms messages) or /ingest sessions (100 ms frames)."""
    legs_start: int = Field(10, ge=1)
    """ingest part: concurrent call legs in the first step."""
    legs_step: int = Field(10, ge=1)
    """ingest part: legs added per step."""
    legs_max: int = Field(200, ge=1)
    """ingest part: the ramp stops here (or at the first step that does not hold)."""
    step_s: float = Field(25.0, gt=5)
    """ingest part: length of each step in seconds (measured after settle_s)."""
    settle_s: float = Field(8.0, ge=0)
    """ingest part: seconds after legs are added before measuring."""
    p99_limit_ms: float = Field(1000.0, gt=0)
    """ingest part: a step holds when nothing is skipped and p99 latency is under this."""
    daemon_set: list[str] = Field(default_factory=list)
    """ingest part: extra --set overrides for the daemon under test, e.g. [worker.max_batch=16]."""
    head_batches: list[int] = Field(default_factory=lambda: [1])
    """head part: batch sizes (windows per forward) to time."""
    head_compile: bool = False
    """head part: also time the three heads through torch.compile (dropformer/compiled.py), in the
    same interleaved run; each graph compiles first (tens of seconds per model and batch size)."""
    md: str | None = None
    """Also write the results as Markdown tables to this file."""
    wavlm_threads: int | None = Field(None, ge=1)
    """wavlm part: torch threads of the monitor's daemon; null = every core (the naive baseline always
    keeps torch's default)."""
    train_files: int = Field(40, ge=2)
    """wavlm part: EmoDB files the head is fitted on (the rest is held out for agreement and the streams)."""
    agreement_windows: int = Field(100, ge=1)
    """wavlm part: 3 s windows of held-out speech compared with exact fp32."""
    live_streams: list[int] = Field(default_factory=lambda: [1, 2, 3, 4, 5, 6, 8])
    """wavlm part: stream counts of the monitor's capacity search (stops at the first that does not hold)."""
    naive_streams: list[int] = Field(default_factory=lambda: [1])
    """wavlm part: stream counts tried with the naive baseline."""
    live_step_s: float = Field(40.0, gt=5)
    """wavlm part: seconds each daemon run lasts."""
    live_settle_s: float = Field(8.0, ge=0)
    """wavlm part: seconds after start before latencies count."""
    live_p99_limit_ms: float = Field(1500.0, gt=0)
    """wavlm part: a step holds when nothing is skipped and p99 audio-to-publish latency is under this."""
    max_batch: int = Field(8, ge=1)
    """wavlm part: the monitor's worker.max_batch (windows batched across streams)."""
    batch_sizes: list[int] = Field(default_factory=list)
    """wavlm part: batch sizes of the per-window batching curve (GPU); [] = 1..64 on CUDA, none on CPU."""
    frontend: dict[str, Any] | None = None
    """wavlm part: force the monitor's front-end settings (e.g. {dtype: bfloat16}); null = the fastest
    candidate that keeps the agreement targets."""
    ray_replicas: list[int] = Field(default_factory=lambda: [1, 2])
    """ray part: replica counts of the Serve application (streamer/bench_ray.py)."""
    ray_gateways: list[int] = Field(default_factory=lambda: [1, 2])
    """ray part: gateway processes sending windows at the same time."""
    ray_in_flight: int = Field(8, ge=1)
    """ray part: windows each gateway keeps in flight (closed loop; the local baseline too)."""
    ray_step_s: float = Field(15.0, gt=1)
    """ray part: seconds each measurement lasts."""
    skip_candidates: list[str] = Field(default_factory=list)
    """wavlm part: front-end candidates not to measure, by name (e.g. ["bf16 throughout"]); exact fp32 always is."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--parts",
        default=None,
        help="comma-separated: head,window,model,rss,wavlm,latency,ingest,ray",
    )


def main(args: argparse.Namespace, config: dict[str, Any]) -> int:
    if args.parts:
        config = {**config, "parts": args.parts.split(",")}
    cfg = validate(BenchConfig, config, source="bench config")
    known = {"head", "window", "model", "rss", "wavlm", "latency", "ingest", "ray"}
    unknown = set(cfg.parts) - known
    if unknown:
        raise ConfigError(
            f"parts has unknown entries {sorted(unknown)}; choose from {', '.join(sorted(known))}"
        )
    import torch

    from dropformer.device import resolve_device
    from streamer import bench
    from streamer.config import demo_audio_path

    torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device, "device")
    rows: list[dict[str, Any]] = []
    if "head" in cfg.parts:
        for b in cfg.head_batches:
            rows += bench.bench_head(device, cfg.repeats, batch=b, compiled=cfg.head_compile)
    if "window" in cfg.parts:
        rows += bench.bench_window(device, cfg.repeats, cfg.checkpoint)
    if "model" in cfg.parts:
        rows += bench.bench_models(cfg.repeats, demo_audio_path())
    if "rss" in cfg.parts:
        rows += bench.bench_rss(cfg.duration_s)
    wavlm: dict[str, Any] | None = None
    if "wavlm" in cfg.parts:
        wavlm = run_wavlm(cfg, device)
    if "latency" in cfg.parts:
        audio = sorted(Path(cfg.audio_dir).glob("*.wav")) if cfg.audio_dir else [demo_audio_path()]
        if not audio or not audio[0].is_file():
            raise ConfigError(
                f"audio_dir {cfg.audio_dir!r} holds no .wav files; point it at a folder of WAV files"
            )
        for n in (1, cfg.streams):
            rows.append(bench.bench_latency(n, cfg.duration_s, audio, cfg.checkpoint, str(device)))
    if "ray" in cfg.parts:
        rows += run_ray(cfg)
    ingest: dict[str, Any] | None = None
    if "ingest" in cfg.parts:
        import asyncio

        from streamer import bench_ingest

        audio = sorted(Path(cfg.audio_dir).glob("*.wav")) if cfg.audio_dir else [demo_audio_path()]
        if not audio:
            raise ConfigError(
                f"audio_dir {cfg.audio_dir!r} holds no .wav files; point it at a folder of WAV files"
            )
        ingest = asyncio.run(
            bench_ingest.ramp(
                audio=audio,
                checkpoint=cfg.checkpoint,
                device=str(device),
                threads=cfg.threads,
                protocol=cfg.protocol,
                legs_start=cfg.legs_start,
                legs_step=cfg.legs_step,
                legs_max=cfg.legs_max,
                step_s=cfg.step_s,
                settle_s=cfg.settle_s,
                p99_limit_ms=cfg.p99_limit_ms,
                daemon_overrides=cfg.daemon_set,
            )
        )
    header = (
        f"device={device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor() or platform.machine()}), "
        f"torch {torch.__version__}, threads={cfg.threads}"
    )
    print(header)
    if rows:
        print(bench.markdown(rows))
    if ingest is not None:
        from streamer import bench_ingest

        print(f"concurrent call legs ({cfg.protocol}), model {ingest['model'].get('rev')}:")
        print(bench_ingest.markdown(ingest))
    text = [header]
    if rows:
        text.append(bench.markdown(rows))
    if wavlm is not None:
        from streamer import bench_live

        text.append(bench_live.markdown(wavlm))
        print(text[-1])
    if cfg.out:
        Path(cfg.out).write_text(
            json.dumps(
                {
                    "environment": header,
                    "config": cfg.model_dump(),
                    "rows": rows,
                    "ingest": ingest,
                    "wavlm": wavlm,
                },
                indent=2,
                default=str,
            )
        )
    if cfg.md:
        Path(cfg.md).write_text("\n\n".join(text) + "\n")
    return 0


def run_ray(cfg: BenchConfig) -> list[dict[str, Any]]:
    """The ray part (streamer/bench_ray.py): the Ray Serve tier next to the local worker."""
    from streamer import bench_ray

    audio_dir = (
        Path(cfg.audio_dir)
        if cfg.audio_dir
        else Path(__file__).resolve().parents[2] / "tests" / "data" / "emodb"
    )
    audio = sorted(audio_dir.glob("*.wav")) or sorted(audio_dir.glob("wav/*.wav"))
    if not audio:
        raise ConfigError(
            f"audio_dir {str(audio_dir)!r} holds no .wav files; point it at a folder of 16 kHz WAV files"
        )
    return bench_ray.run(
        bench_ray.RayBenchConfig(
            audio=audio,
            checkpoint=cfg.checkpoint or "emodb_logmel",
            replica_counts=cfg.ray_replicas,
            gateway_counts=cfg.ray_gateways,
            concurrency=cfg.ray_in_flight,
            step_s=cfg.ray_step_s,
            max_batch=cfg.max_batch,
            max_wait_ms=10.0,
            threads=cfg.threads,
        )
    )


def run_wavlm(cfg: BenchConfig, device: Any) -> dict[str, Any]:
    """The wavlm part (streamer/bench_live.py): WavLM-Large at layer 12 live, naive baseline vs the monitor."""
    import os
    import tempfile

    from streamer import bench_live

    audio_dir = (
        Path(cfg.audio_dir)
        if cfg.audio_dir
        else Path(__file__).resolve().parents[2] / "tests" / "data" / "emodb"
    )
    if not any(audio_dir.glob("*.wav")) and not any(audio_dir.glob("wav/*.wav")):
        raise ConfigError(
            f"audio_dir {str(audio_dir)!r} holds no EmoDB .wav files; point it at EmoDB's wav folder"
        )
    live = bench_live.LiveConfig(
        device=device,
        audio_dir=audio_dir,
        threads=cfg.wavlm_threads or os.cpu_count() or 1,
        repeats=min(cfg.repeats, 10),
        train_files=cfg.train_files,
        agreement_windows=cfg.agreement_windows,
        streams=cfg.live_streams,
        naive_streams=cfg.naive_streams,
        step_s=cfg.live_step_s,
        settle_s=cfg.live_settle_s,
        max_batch=cfg.max_batch,
        p99_limit_ms=cfg.live_p99_limit_ms,
        frontend=cfg.frontend,
        skip=cfg.skip_candidates,
        batch_sizes=cfg.batch_sizes or ([1, 2, 4, 8, 16, 32, 64] if device.type == "cuda" else []),
    )

    def partial(result: dict[str, Any]) -> None:  # a run cut short still leaves what it measured
        if cfg.out:
            Path(cfg.out).with_suffix(".partial.json").write_text(
                json.dumps(result, indent=2, default=str)
            )
        if cfg.md:
            Path(cfg.md).with_suffix(".partial.md").write_text(bench_live.markdown(result) + "\n")

    cache = os.environ.get("EMOTION_MONITOR_CACHE")
    with tempfile.TemporaryDirectory(prefix="bench-wavlm-") as workdir:
        os.environ["EMOTION_MONITOR_CACHE"] = (
            workdir  # converted copies of the random WavLM die with it
        )
        try:
            result = bench_live.run(live, Path(workdir), partial)
        finally:
            if cache is None:
                os.environ.pop("EMOTION_MONITOR_CACHE", None)
            else:
                os.environ["EMOTION_MONITOR_CACHE"] = cache
    for path in (cfg.out, cfg.md):
        if path:
            Path(path).with_suffix(".partial" + Path(path).suffix).unlink(missing_ok=True)
    return result
