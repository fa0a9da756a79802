"""Benchmarks behind ``emotion-monitor bench``; every figure comes with a baseline
measured in the same run.

- ``head``: DropFormer, its no-TDM preset (baseline) and the vanilla
  Transformer, same weights, on 150 tokens (3 s at 50 Hz), at the default
  model's size and the paper's, with today's implementation beside them.
- ``window``: per-window inference time of the default model (front end + head,
  3 s window, batch 1), against the vanilla Transformer of the same size.
- ``wavlm``: WavLM-Large at layer 12 live (streamer/bench_live.py): the naive
  Hugging Face baseline next to the monitor's path, through the real daemon.
- ``model``: each bundled model (the Whisper default, the log-mel option as
  the baseline) on one 3 s window of real speech: front end, per-stream
  normalisation + head, and the whole, batch 1.
- ``rss``: the daemon's peak resident memory (``emotion-monitor run`` on the
  bundled demo, VmHWM of the process) with the default model and, as the
  baseline, with the log-mel model.
- ``latency``: the whole daemon on real-time file streams of real speech:
  audio-to-publish latency (window end to estimate published), median and p99,
  for 1 stream (baseline) and for N streams sharing the worker.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

log = logging.getLogger(__name__)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float("nan")


def time_calls(
    fn: Callable[[], Any], repeats: int, warmup: int = 3, desc: str = ""
) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in tqdm(range(repeats), desc=desc, leave=False, disable=not desc):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1000.0)
    return {"median_ms": statistics.median(times), "p99_ms": percentile(times, 99), "n": len(times)}


#: The head sizes ``--parts head`` compares: the default model's (Whisper-base layers 2-3, 1024-dim
#: features; configs/train/whisper.yaml) and the paper's (WavLM-Large, d 1024, 8 heads, FFN 512).
HEAD_SIZES: dict[str, dict[str, Any]] = {
    "default size (d 128)": {
        "input_dim": 1024,
        "d_model": 128,
        "num_heads": 4,
        "ffn_dim": 256,
        "head_hidden": (128,),
    },
    "paper size (d 1024)": {"input_dim": 1024, "d_model": 1024},
}


def time_interleaved(
    fns: dict[str, Callable[[], Any]], repeats: int, desc: str = ""
) -> dict[str, dict[str, float]]:
    """Time several callables in turn, ``repeats`` rounds, so that drifts in the machine's load hit them alike."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in tqdm(range(repeats), desc=desc, leave=False, disable=not desc):
        for name, fn in fns.items():
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times[name].append((time.perf_counter() - t0) * 1000.0)
    return {
        k: {"median_ms": statistics.median(v), "p99_ms": percentile(v, 99), "n": len(v)}
        for k, v in times.items()
    }


def reference_module() -> Any:
    """Today's (pre-issue-10) DropFormer kept by the tests, when this is a source checkout; else None."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "tests" / "dropformer" / "reference_dropformer.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("reference_dropformer", path)
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (its dataclasses look themselves up there)
    spec.loader.exec_module(module)
    return module


@torch.inference_mode()
def bench_head(
    device: torch.device, repeats: int, tokens: int = 150, batch: int = 1, compiled: bool = False
) -> list[dict[str, Any]]:
    """DropFormer, its no-TDM preset and the vanilla Transformer (same weights) on one 3 s window
    (150 tokens) at the default model's size and at the paper's, timed in turn in one run; today's
    implementation (the tests' reference) beside them when this is a source checkout. ``compiled``
    adds the three through ``torch.compile`` (dropformer/compiled.py) to the same interleaved run,
    with the seconds each took to compile."""
    from dropformer import DropFormer, preset
    from dropformer.compiled import compile_for_inference

    reference = reference_module()
    rows = []
    for size, kw in HEAD_SIZES.items():
        torch.manual_seed(0)
        x = torch.randn(batch, tokens, kw["input_dim"], device=device)
        n = torch.full((batch,), tokens, device=device)
        models: dict[str, Any] = {}
        state = None
        for name in ("vanilla", "no_tdm", "dropformer"):
            models[name] = DropFormer(preset(name, **kw)).to(device).eval()
            state = state or models[name].state_dict()
            models[name].load_state_dict(state)
            if reference is not None and name != "no_tdm":
                models[f"{name} (today's code)"] = (
                    reference.ReferenceDropFormer(preset(name, **kw)).to(device).eval()
                )
                models[f"{name} (today's code)"].load_state_dict(state)
        compile_s: dict[str, float] = {}
        for name in ("vanilla", "no_tdm", "dropformer") if compiled else ():
            head = compile_for_inference(models[name])
            t0 = time.perf_counter()
            head(x, n)  # builds the graph
            compile_s[f"{name} (compiled)"] = round(time.perf_counter() - t0, 1)
            models[f"{name} (compiled)"] = head
        timed = time_interleaved(
            {k: partial(m, x, n) for k, m in models.items()}, repeats, desc=f"head, {size}"
        )
        base = timed["no_tdm"]["median_ms"]
        for name, model in models.items():
            title = {
                "vanilla": "vanilla Transformer",
                "no_tdm": "DropFormer w/o TDM (baseline)",
                "dropformer": "DropFormer (TDM, DR 0.1)",
            }.get(name.split(" (")[0], name)
            rows.append(
                {
                    "what": f"{title}{name[len(name.split(' (')[0]) :]}, {size}, {tokens} tokens, batch {batch}",
                    **timed[name],
                    "tokens_kept": int(model(x, n).kept_tokens[0, -1]),
                    "vs_no_tdm": f"{100 * (timed[name]['median_ms'] / base - 1):+.1f}%",
                    **({"compile_s": compile_s[name]} if name in compile_s else {}),
                }
            )
    return rows


@torch.inference_mode()
def bench_window(
    device: torch.device, repeats: int, checkpoint: str | None
) -> list[dict[str, Any]]:
    """Per-window inference of the default model against a vanilla model of the same size."""
    from dropformer import DropFormer
    from streamer.engine import Engine

    engine = Engine.load(checkpoint, device=str(device))
    rng = np.random.default_rng(0)
    wave = (0.1 * rng.standard_normal(48000)).astype(np.float32)
    vanilla = DropFormer(
        type(engine.model.cfg)(
            **{**engine.model.cfg.to_dict(), "use_tdm": False, "use_drop_attention": False}
        )
    )
    vanilla = vanilla.to(device).eval()
    rows = []
    for name, model in (
        ("vanilla Transformer, same size (baseline)", vanilla),
        ("default model", engine.model),
    ):
        original = engine.model
        engine.model = model
        r = time_calls(lambda: engine.run([wave]), repeats, desc=name)
        engine.model = original
        rows.append({"what": f"{name}: {engine.info['frontend']} + head, 3 s window, batch 1", **r})
    return rows


@torch.inference_mode()
def bench_models(repeats: int, audio: Path) -> list[dict[str, Any]]:
    """Front end, head and whole model per 3 s window of real speech, for each bundled model."""
    from dropformer.data.audio import load_audio
    from streamer.engine import Engine, NormStats, bundled_checkpoint

    wave = np.resize(load_audio(audio), 48000).astype(np.float32)
    x, n = torch.from_numpy(wave)[None], torch.tensor([48000])
    rows = []
    for name in ("emodb_logmel", None):
        engine = Engine.load(str(bundled_checkpoint(name)), device="cpu")
        tag = f"{engine.info['rev']} ({engine.info['frontend']})" + (
            " (baseline)" if name else " (default)"
        )
        feats, lengths = engine.frontend(x, n)
        norm = engine.new_normalizer()
        stats: list[NormStats | None] | None = [norm.stats()] if norm is not None else None
        fe = time_calls(partial(engine.frontend, x, n), repeats, desc=f"{tag} front end")
        head = time_calls(partial(engine.model, feats, lengths), repeats, desc=f"{tag} head")
        whole = time_calls(partial(engine.run, [wave], stats), repeats, desc=f"{tag} whole")
        params = sum(p.numel() for p in engine.model.parameters())
        fe_params = sum(p.numel() for p in engine.frontend.parameters())
        rows += [
            {"what": f"{tag}: front end, 3 s window", **fe, "parameters": fe_params},
            {"what": f"{tag}: head, {int(lengths[0])} tokens", **head, "parameters": params},
            {"what": f"{tag}: whole model (front end + normalisation + head)", **whole},
        ]
    return rows


def bench_rss(seconds: float) -> list[dict[str, Any]]:
    """Peak RSS of ``emotion-monitor run`` (the bundled demo, real time) with each bundled model."""
    import os
    import signal
    import subprocess
    import sys

    from streamer.engine import bundled_checkpoint

    rows = []
    for name in ("emodb_logmel", None):
        folder = bundled_checkpoint(name)
        cmd = [
            sys.executable,
            "-m",
            "streamer.cli",
            "run",
            "--log-level",
            "WARNING",
            "--set",
            f"model.checkpoint={folder}",
            "--set",
            "publish.websocket.port=0",
            "--set",
            f"duration_s={seconds}",
        ]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        peak_kb = 0
        t_end = time.monotonic() + seconds + 60
        while proc.poll() is None and time.monotonic() < t_end:
            try:
                status = Path(f"/proc/{proc.pid}/status").read_text()
                peak_kb = max(
                    peak_kb,
                    int(
                        next(ln.split()[1] for ln in status.splitlines() if ln.startswith("VmHWM"))
                    ),
                )
            except (OSError, StopIteration, ValueError):
                pass
            time.sleep(0.2)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
        proc.wait(30)
        label = f"daemon peak RSS, {folder.name if folder else '?'}" + (
            " (baseline)" if name else " (default)"
        )
        rows.append(
            {
                "what": label,
                "median_ms": float("nan"),
                "p99_ms": float("nan"),
                "n": 1,
                "peak_rss_mb": round(peak_kb / 1024.0, 1),
                "seconds": seconds,
                "exit": proc.returncode,
            }
        )
    return rows


def bench_latency(
    streams: int, duration_s: float, audio: list[Path], checkpoint: str | None, device: str
) -> dict[str, Any]:
    """Run the real daemon on ``streams`` real-time file streams; collect latency_ms of estimates."""
    from streamer.config import DaemonConfig
    from streamer.daemon import Daemon

    latencies: list[float] = []
    counters: dict[str, Any] = {}
    stream_cfgs = [
        {
            "id": f"s{i}",
            "source": {
                "kind": "file",
                "path": str(audio[i % len(audio)]),
                "realtime": True,
                "loop": True,
            },
        }
        for i in range(streams)
    ]
    cfg = DaemonConfig.model_validate(
        {
            "model": {"checkpoint": checkpoint, "device": device},
            "streams": stream_cfgs,
            "duration_s": duration_s,
            "gate": {"kind": "none"},
            "publish": {"websocket": {"enabled": False}},
        }
    )

    async def main() -> None:
        async with Daemon(cfg) as daemon:
            original = daemon.hub.publish

            def tap(event: Mapping[str, Any]) -> None:
                if event.get("type") == "emotion.estimate" and event.get("speech"):
                    latencies.append(float(event["latency_ms"]))
                original(event)

            daemon.hub.publish = tap  # type: ignore[method-assign]
            with tqdm(
                total=duration_s, desc=f"daemon, {streams} stream(s)", unit="s", leave=False
            ) as bar:

                async def tick() -> None:
                    while True:
                        await asyncio.sleep(1.0)
                        bar.update(1.0)

                ticker = asyncio.create_task(tick())
                try:
                    await daemon.run()
                finally:
                    ticker.cancel()
            counters.update(daemon.health()["worker"])
            counters["skipped_stale"] = sum(
                c["skipped_stale"] for c in daemon.health()["streams"].values()
            )

    asyncio.run(main())
    return {
        "what": f"audio-to-publish latency, {streams} real-time stream(s)",
        "median_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "n": len(latencies),
        "skipped_stale": counters.get("skipped_stale", 0),
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| measurement | median ms | p99 ms | n | notes |", "|---|---:|---:|---:|---|"]
    for r in rows:
        notes = ", ".join(
            f"{k}={v}" for k, v in r.items() if k not in ("what", "median_ms", "p99_ms", "n")
        )
        med, p99 = (f"{r[k]:.1f}" if np.isfinite(r[k]) else "-" for k in ("median_ms", "p99_ms"))
        lines.append(f"| {r['what']} | {med} | {p99} | {r['n']} | {notes} |")
    return "\n".join(lines)
