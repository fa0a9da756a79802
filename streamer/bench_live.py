"""The paper's front end live: ``emotion-monitor bench --parts wavlm``.

WavLM-Large cut at layer 12 (random weights of the real architecture, saved
with ``save_pretrained`` and loaded through ``from_pretrained``: the real
weights cannot be downloaded here) with a DropFormer head, on real speech
(EmoDB), in one run:

1. **Head.** With random WavLM weights any head gives arbitrary labels, so one
   is trained (the default model's head size, a few seconds) on the exact fp32
   layer-12 features of ``train_files`` EmoDB files with their labels, which
   makes its labels follow the speech rather than sit on one class. Its
   predicted-label spread is reported next to the agreement.
2. **Candidates.** Front-end precisions (CPU: fp32, bf16 transformer + fp32
   convolutions, bf16 throughout; GPU: fp32, fp16, bf16) are timed per window
   (front end and head apart) and compared with exact fp32 on
   ``agreement_windows`` 3 s windows of held-out speech: label agreement and
   the largest probability difference. The fastest candidate that keeps the
   agreement targets is the monitor's path; the others are reported as lost.
3. **Live.** The real daemon, in a subprocess per run so that its peak RSS is
   its own, on staggered real-time streams of EmoDB speech (each stream its
   own files, looped), for the naive baseline (what a Hugging Face user writes:
   the feature extractor, the full WavLM with every layer, the head, fp32,
   batch 1, no gate, torch's default threads) and for the monitor's path (layers
   above 12 never loaded, the chosen precision, warm-up at start-up, batching
   across streams, the energy gate). Each run reports the audio-to-publish
   latency p50/p99 (after ``settle_s``), windows classified, skipped as stale
   and gated as silence, and the daemon's peak RSS. A capacity search raises
   the stream count until a step does not hold (a window skipped, or p99 over
   the limit).
4. **Batching** (GPU): per-window time of the chosen path at growing batch
   sizes, and the batch after which doubling saves less than 10%.

The result is a dict (written as JSON by the bench command) and
:func:`markdown` renders it as the tables in BENCHMARKS.md.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

log = logging.getLogger(__name__)

SAMPLE_RATE_HZ = 16000
WINDOW_S, HOP_S = 3.0, 1.0
LAYER = 12
#: WavLM-Large's architecture (microsoft/wavlm-large): 24 layers, layer-norm convolutional encoder.
WAVLM_LARGE: dict[str, Any] = {
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "intermediate_size": 4096,
    "do_stable_layer_norm": True,
    "feat_extract_norm": "layer",
    "conv_bias": True,
}
#: The head: the default model's size (configs/train/whisper.yaml) on WavLM's 1024-dim features.
HEAD: dict[str, Any] = {
    "input_dim": 1024,
    "d_model": 128,
    "num_heads": 4,
    "ffn_dim": 256,
    "head_hidden": (128,),
}
LABELS = ["neutral", "happy", "angry", "sad"]
#: Agreement targets with exact fp32 (issue 10).
MIN_LABEL_AGREEMENT, MAX_PROB_DIFF = 0.99, 0.02


@dataclass
class LiveConfig:
    """What ``--parts wavlm`` runs (every field has a BenchConfig key of the same name)."""

    device: torch.device
    audio_dir: Path
    threads: int
    """torch threads of the monitor's daemon (the naive baseline keeps torch's default)."""
    repeats: int = 5
    train_files: int = 40
    agreement_windows: int = 100
    streams: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5, 6, 8])
    """Stream counts of the monitor's capacity search, in order; it stops at the first that does not hold."""
    naive_streams: list[int] = field(default_factory=lambda: [1])
    step_s: float = 40.0
    settle_s: float = 8.0
    max_batch: int = 8
    p99_limit_ms: float = 1500.0
    batch_sizes: list[int] = field(default_factory=list)
    """Batch sizes of the batching curve; [] = none on CPU, 1..64 on GPU."""
    frontend: dict[str, Any] | None = None
    """Force the monitor's front-end settings instead of choosing among the candidates."""
    skip: list[str] = field(default_factory=list)
    """Candidates (by name, see :func:`candidates`) not to measure; exact fp32 always is."""


# ------------------------------------------------------------------ assets
def save_random_wavlm_large(folder: Path, seed: int = 0) -> Path:
    """WavLM-Large's architecture with random weights, as a ``from_pretrained`` folder."""
    from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMModel

    torch.manual_seed(seed)
    WavLMModel(WavLMConfig(**WAVLM_LARGE)).eval().save_pretrained(folder)
    Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True).save_pretrained(folder)
    return folder


def split_corpus(audio_dir: Path, train_files: int) -> tuple[list[tuple[Path, str]], list[Path]]:
    """EmoDB files: ``train_files`` labelled ones (classes in turn) for the head, the rest held out."""
    from dropformer.data.emodb import read_emodb

    utts = read_emodb(audio_dir).utterances
    if not utts:
        raise ValueError(
            f"no EmoDB files of the 4 classes in {audio_dir}; set audio_dir to EmoDB's wav folder"
        )
    by_label: dict[str, list[Any]] = {}
    for u in utts:
        by_label.setdefault(u.label, []).append(u)
    train: list[tuple[Path, str]] = []
    while len(train) < min(train_files, len(utts) // 2) and any(by_label.values()):
        for label in LABELS:
            if by_label.get(label) and len(train) < train_files:
                u = by_label[label].pop(0)
                train.append((Path(u.path), label))
    used = {p for p, _ in train}
    return train, [Path(u.path) for u in utts if Path(u.path) not in used]


def speech(paths: list[Path], seconds: float, start: int = 0) -> np.ndarray:
    """Real speech: the files from ``start`` on (wrapping), concatenated to about ``seconds``."""
    from dropformer.data.audio import load_audio

    parts, total, i = [], 0, start
    while total < seconds * SAMPLE_RATE_HZ:
        x = load_audio(paths[i % len(paths)])
        parts.append(x)
        total += len(x)
        i += 1
    return np.concatenate(parts)[: int(seconds * SAMPLE_RATE_HZ)]


def windows_of(signal: np.ndarray, count: int) -> list[np.ndarray]:
    """``count`` live windows (3 s, every 1 s) of a signal."""
    n, hop = int(WINDOW_S * SAMPLE_RATE_HZ), int(HOP_S * SAMPLE_RATE_HZ)
    return [signal[i * hop : i * hop + n] for i in range(count) if i * hop + n <= len(signal)]


def fit_head(
    features: list[torch.Tensor], targets: list[int], epochs: int = 60, seed: int = 0
) -> Any:
    """Train the head on fixed features (T_i, 1024) with their labels; returns it in eval mode."""
    from dropformer import DropFormer, preset

    torch.manual_seed(seed)
    model = DropFormer(preset("dropformer", **HEAD, head_dropout=0.3))
    lengths = torch.tensor([f.shape[0] for f in features])
    x = torch.zeros(len(features), int(lengths.max()), features[0].shape[1])
    for i, f in enumerate(features):
        x[i, : f.shape[0]] = f
    y = torch.tensor(targets)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    model.train()
    for _ in tqdm(range(epochs), desc="fit head", leave=False):
        order = torch.randperm(len(features))
        for batch in order.split(16):
            loss = torch.nn.functional.cross_entropy(
                model(x[batch], lengths[batch]).logits, y[batch]
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def build_checkpoint(
    workdir: Path, audio_dir: Path, train_files: int, device: torch.device
) -> dict[str, Any]:
    """Random WavLM-Large, a head fitted on its exact layer-12 features, a checkpoint folder; the held-out files."""
    from dropformer import FrontendConfig, build_frontend, save_checkpoint
    from dropformer.data.audio import load_audio

    wavlm_dir = save_random_wavlm_large(workdir / "wavlm-large-random")
    train, held_out = split_corpus(audio_dir, train_files)
    frontend = (
        build_frontend(FrontendConfig(kind="wavlm", model=str(wavlm_dir), layer=LAYER))
        .to(device)
        .eval()
    )
    feats, targets = [], []
    n_max = int(WINDOW_S * SAMPLE_RATE_HZ)
    with torch.inference_mode():
        for path, label in tqdm(train, desc="head features (exact fp32)", leave=False):
            x = torch.from_numpy(load_audio(path)[:n_max])[None].to(device)
            f, n = frontend(x, torch.tensor([x.shape[1]], device=device))
            feats.append(f[0, : int(n[0])].float().cpu())
            targets.append(LABELS.index(label))
    del frontend
    gc.collect()
    head = fit_head(feats, targets)
    ckpt = save_checkpoint(
        workdir / "checkpoint",
        head,
        frontend_config=FrontendConfig(kind="wavlm", model=str(wavlm_dir), layer=LAYER),
        labels=LABELS,
        meta={"note": "random WavLM-Large + head fitted on its features: benchmark only"},
    )
    return {"checkpoint": ckpt, "wavlm": wavlm_dir, "held_out": held_out, "train_files": len(train)}


# ----------------------------------------------------------------- engines
class NaiveEngine:
    """What a Hugging Face user writes: per window, the feature extractor, the whole WavLM
    (every layer, ``output_hidden_states``), layer 12's output into the head; fp32, batch 1."""

    def __init__(
        self, checkpoint: Path, wavlm: Path, device: str = "cpu", layer: int = LAYER
    ) -> None:
        from transformers import Wav2Vec2FeatureExtractor, WavLMModel

        from dropformer import load_checkpoint
        from streamer.engine import resolve_device

        ckpt = load_checkpoint(checkpoint)
        self.device = resolve_device(device)
        self.layer = layer
        self.labels = list(ckpt.labels)
        self.info: dict[str, Any] = {
            "name": "naive-hf",
            "frontend": f"wavlm@{layer} (full model)",
            "rev": "naive",
        }
        self.extractor = Wav2Vec2FeatureExtractor.from_pretrained(str(wavlm))
        model: Any = WavLMModel.from_pretrained(str(wavlm))
        self.wavlm = model.to(self.device).eval()
        self.model = ckpt.model.to(self.device).eval()

    def new_normalizer(self) -> None:
        return None

    def features(self, wave: np.ndarray) -> torch.Tensor:
        inputs = self.extractor(wave, sampling_rate=SAMPLE_RATE_HZ, return_tensors="pt").to(
            self.device
        )
        with torch.no_grad():
            return self.wavlm(**inputs, output_hidden_states=True).hidden_states[
                self.layer
            ]  # (1, T, D)

    def run(self, waves: list[np.ndarray], norms: Any = None) -> Any:
        from streamer.engine import BatchResult

        t0 = time.perf_counter()
        probs, kept = [], []
        for wave in waves:
            feats = self.features(wave)
            with torch.no_grad():
                out = self.model(feats, torch.tensor([feats.shape[1]]))
            probs.append(torch.softmax(out.logits.float(), dim=-1)[0].cpu().numpy())
            kept.append(out.kept_tokens[0].cpu().numpy())
        k = np.stack(kept)
        return BatchResult(np.stack(probs), k[:, 0], k[:, -1], (time.perf_counter() - t0) * 1000.0)


def candidates(device: torch.device) -> list[tuple[str, dict[str, Any]]]:
    """Front-end precisions to try: (name, FrontendConfig overrides); the first is exact fp32."""
    if device.type == "cuda":
        return [
            ("fp32 (exact)", {"dtype": "float32"}),
            ("fp16", {"dtype": "float16"}),
            ("bf16", {"dtype": "bfloat16"}),
            ("bf16 products, fp32 elsewhere", {"products_dtype": "bfloat16"}),
        ]
    return [
        ("fp32 (exact)", {"dtype": "float32"}),
        ("bf16 products, fp32 elsewhere", {"products_dtype": "bfloat16"}),
        (
            "bf16 products in the layers, fp32 elsewhere",
            {"products_dtype": "bfloat16", "conv_dtype": "float32"},
        ),
        ("bf16 layers, fp32 convolutions", {"dtype": "bfloat16", "conv_dtype": "float32"}),
        ("bf16 throughout", {"dtype": "bfloat16"}),
        # frontend.compile: the same precisions through torch.compile (inductor, frozen weights)
        ("fp32, compiled", {"dtype": "float32", "compile": True}),
        (
            "bf16 products, fp32 elsewhere, compiled",
            {"products_dtype": "bfloat16", "compile": True},
        ),
        (
            "bf16 products in the layers, fp32 elsewhere, compiled",
            {"products_dtype": "bfloat16", "conv_dtype": "float32", "compile": True},
        ),
        (
            "bf16 layers, fp32 convolutions, compiled",
            {"dtype": "bfloat16", "conv_dtype": "float32", "compile": True},
        ),
        (  # a second copy of the weights, repacked for the CPU library: faster on some CPUs
            "bf16 products in the layers, fp32 elsewhere, compiled, prepacked weights",
            {
                "products_dtype": "bfloat16",
                "conv_dtype": "float32",
                "compile": True,
                "compile_prepack": True,
            },
        ),
    ]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_ms(fn: Callable[[], Any], repeats: int, device: torch.device) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1000.0)
    return float(np.median(times))


@torch.inference_mode()
def time_engine(engine: Any, window: np.ndarray, batch: int, repeats: int) -> dict[str, float]:
    """Front end, head and whole per window (ms), ``batch`` copies of ``window`` at once."""
    dev = engine.device
    x = torch.from_numpy(np.stack([window] * batch)).to(dev)
    n = torch.full((batch,), x.shape[1], device=dev)
    if isinstance(engine, NaiveEngine):
        fe = _median_ms(lambda: engine.features(window), repeats, dev)
        feats = engine.features(window)
        lengths = torch.tensor([feats.shape[1]])
    else:
        fe = _median_ms(lambda: engine.frontend(x, n), repeats, dev) / batch
        feats, lengths = engine.frontend(x, n)
    head = _median_ms(lambda: engine.model(feats, lengths), repeats, dev) / feats.shape[0]
    whole = _median_ms(lambda: engine.run([window] * batch), repeats, dev) / batch
    return {"frontend_ms": fe, "head_ms": head, "window_ms": whole}


def agreement(reference: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """Labels agreeing and the largest probability difference between two (N, C) arrays."""
    same = reference.argmax(1) == probs.argmax(1)
    return {
        "label_agreement": float(same.mean()),
        "max_prob_diff": float(np.abs(reference - probs).max()),
        "mean_prob_diff": float(np.abs(reference - probs).mean()),
        "windows": len(same),
    }


def classify(engine: Any, windows: list[np.ndarray], desc: str) -> np.ndarray:
    return np.stack([engine.run([w]).probs[0] for w in tqdm(windows, desc=desc, leave=False)])


# ------------------------------------------------------------------ daemon
def run_daemon(spec: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """One daemon run in a subprocess (its own RSS): ``python -m streamer.bench_live SPEC``."""
    with tempfile.TemporaryDirectory() as d:
        spec_path, out_path = Path(d) / "spec.json", Path(d) / "out.json"
        spec_path.write_text(json.dumps(spec))
        cmd = [sys.executable, "-m", "streamer.bench_live", str(spec_path), str(out_path)]
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                p
                for p in (str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH"))
                if p
            ),
        }
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
        if proc.returncode != 0 or not out_path.is_file():
            raise RuntimeError(f"daemon run failed ({proc.returncode}): {proc.stderr[-3000:]}")
        return dict(json.loads(out_path.read_text()))


async def _daemon_main(spec: dict[str, Any]) -> dict[str, Any]:
    """Inside the subprocess: the real daemon, staggered real-time file streams, a tap on the hub."""
    from streamer.config import DaemonConfig
    from streamer.daemon import Daemon
    from streamer.sources.file import FileSource
    from streamer.worker import InferenceBackend, InferenceWorker

    naive = spec["mode"] == "naive"
    model: dict[str, Any] = {
        "checkpoint": spec["checkpoint"],
        "device": spec["device"],
        "frontend": spec.get("frontend", {}),
    }
    if spec.get("threads"):
        model["threads"] = spec["threads"]
    cfg = DaemonConfig.model_validate(
        {
            "model": model,
            "streams": [],
            "worker": {
                "max_batch": 1 if naive else spec["max_batch"],
                "max_wait_ms": 0 if naive else 10,
                "queue_size": max(32, 4 * len(spec["streams"])),
            },
            "gate": {"kind": "none" if naive else "energy"},
            "publish": {
                "websocket": {"enabled": True, "port": 0, "dashboard": False, "importance": False}
            },
            "status_interval_s": None,
        }
    )
    backend: InferenceBackend | None = None
    if naive:
        backend = InferenceWorker(
            lambda: NaiveEngine(
                Path(spec["checkpoint"]),
                Path(spec["wavlm"]),
                spec["device"],  # type: ignore[arg-type,return-value]
                spec.get("layer", LAYER),
            ),
            max_batch=1,
            max_wait_ms=0,
            queue_size=cfg.worker.queue_size,
        )
    published: list[tuple[float, float]] = []  # (monotonic time, latency_ms) of speech estimates
    stop = asyncio.Event()
    t_load = time.monotonic()
    async with Daemon(cfg, backend=backend) as daemon:
        load_s = time.monotonic() - t_load
        original = daemon.hub.publish

        def tap(event: Mapping[str, Any]) -> None:
            if event.get("type") == "emotion.estimate" and event.get("speech"):
                published.append((time.monotonic(), float(event["latency_ms"])))
            original(event)

        daemon.hub.publish = tap  # type: ignore[method-assign]
        runner = asyncio.create_task(daemon.run(stop))
        t0 = time.monotonic()
        streams = spec["streams"]
        for i, path in enumerate(
            streams
        ):  # start times spread over one hop, as independent streams are
            daemon.open_network_stream(f"s{i}", FileSource(path, f"s{i}", realtime=True, loop=True))
            await asyncio.sleep(HOP_S / len(streams))
        await asyncio.sleep(max(0.0, spec["duration_s"] - (time.monotonic() - t0)))
        stop.set()
        await runner
        health = daemon.health()
    lat = [ms for t, ms in published if t - t0 >= spec["settle_s"]]
    ended = health["ended_streams"]
    peak_kb, now_kb = memory_kb("VmHWM"), memory_kb("VmRSS")
    out = {
        "streams": len(streams),
        "seconds": spec["duration_s"],
        "load_s": round(load_s, 1),
        "estimates": len(lat),
        "p50_ms": _pct(lat, 50),
        "p99_ms": _pct(lat, 99),
        "max_ms": max(lat, default=float("nan")),
        "windows": ended.get("windows", 0),
        "skipped_stale": ended.get("skipped_stale", 0),
        "skipped_silence": ended.get("skipped_silence", 0),
        "worker": health["worker"],
        "peak_rss_mb": round(peak_kb / 1024.0, 1),
        "rss_mb": round(now_kb / 1024.0, 1),
    }
    if torch.cuda.is_available() and spec["device"] != "cpu":
        out["gpu_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def memory_kb(field: str = "VmHWM") -> int:
    """This process's resident memory from /proc/self/status, KiB: VmHWM (peak) or VmRSS (now)."""
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith(field))


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def holds(run: dict[str, Any], p99_limit_ms: float) -> bool:
    """A step holds: every window classified in time (none skipped) and p99 under the limit."""
    return run["skipped_stale"] == 0 and run["estimates"] > 0 and run["p99_ms"] < p99_limit_ms


def capacity(
    spec: dict[str, Any], counts: list[int], stream_files: list[Path], cfg: LiveConfig, desc: str
) -> tuple[list[dict[str, Any]], int]:
    """Daemon runs at growing stream counts until one does not hold; the largest that held."""
    runs, best = [], 0
    for n in tqdm(counts, desc=desc, leave=False):
        run = run_daemon(
            {
                **spec,
                "streams": [str(p) for p in stream_files[:n]],
                "duration_s": cfg.step_s,
                "settle_s": cfg.settle_s,
            },
            timeout_s=cfg.step_s + 600,
        )
        run["holds"] = holds(run, cfg.p99_limit_ms)
        runs.append(run)
        log.info(
            "%s: %d stream(s): p50 %.0f ms, p99 %.0f ms, skipped %d -> %s",
            desc,
            n,
            run["p50_ms"],
            run["p99_ms"],
            run["skipped_stale"],
            "holds" if run["holds"] else "does not hold",
        )
        if not run["holds"]:
            break
        best = n
    return runs, best


# --------------------------------------------------------------------- run
def run(
    cfg: LiveConfig, workdir: Path, on_progress: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Everything above, in order; returns the figures (see :func:`markdown`). ``on_progress`` gets the
    figures so far after each phase (a run cut short still leaves them)."""
    report = on_progress or (lambda r: None)
    from streamer.engine import Engine

    dev = cfg.device
    result: dict[str, Any] = {
        "device": str(dev),
        "threads": cfg.threads,
        "layer": LAYER,
        "head": HEAD,
        "p99_limit_ms": cfg.p99_limit_ms,
    }
    assets = build_checkpoint(workdir, cfg.audio_dir, cfg.train_files, dev)
    held_out: list[Path] = assets["held_out"]
    result["train_files"], result["held_out_files"] = assets["train_files"], len(held_out)
    windows = windows_of(speech(held_out, cfg.agreement_windows + WINDOW_S), cfg.agreement_windows)
    one = windows[0]

    rows: list[dict[str, Any]] = []
    probs: dict[str, np.ndarray] = {}
    naive_threads = os.cpu_count() or 1  # torch's default: a naive user sets nothing
    torch.set_num_threads(naive_threads)
    naive = NaiveEngine(assets["checkpoint"], assets["wavlm"], str(dev))
    rows.append(
        {
            "what": "naive baseline: feature extractor + full WavLM (24 layers) + head, fp32, batch 1",
            "threads": naive_threads,
            **time_engine(naive, one, 1, cfg.repeats),
        }
    )
    del naive
    gc.collect()
    torch.set_num_threads(cfg.threads)
    tried = [c for i, c in enumerate(candidates(dev)) if i == 0 or c[0] not in cfg.skip]
    for name, overrides in tqdm(tried, desc="front-end candidates", leave=False):
        engine = Engine.load(
            str(assets["checkpoint"]), device=str(dev), frontend_overrides=overrides
        )
        warm_up_s = engine.warm_up(len(one))  # compiles, with frontend.compile
        timing = time_engine(engine, one, 1, cfg.repeats)
        probs[name] = classify(engine, windows, name)
        row = {
            "what": f"layers 1-{LAYER} only, {name}",
            "overrides": overrides,
            "threads": cfg.threads,
            "warm_up_s": round(warm_up_s, 1),
            **timing,
        }
        if name != tried[0][0]:
            row.update(agreement(probs[tried[0][0]], probs[name]))
        else:
            counts = np.bincount(probs[name].argmax(1), minlength=len(LABELS))
            result["exact_label_spread"] = dict(zip(LABELS, counts.tolist()))
        if cfg.batch_sizes and dev.type == "cuda":
            row["batching"] = {
                b: time_engine(engine, one, b, cfg.repeats)["window_ms"] for b in cfg.batch_sizes
            }
        rows.append(row)
        del engine
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    result["per_window"] = rows
    report(result)
    ok = [
        r
        for r in rows[1:]
        if r.get("label_agreement", 1.0) >= MIN_LABEL_AGREEMENT
        and r.get("max_prob_diff", 0.0) <= MAX_PROB_DIFF
    ]
    chosen = min(ok, key=lambda r: r["window_ms"]) if cfg.frontend is None else None
    front = cfg.frontend if cfg.frontend is not None else chosen["overrides"] if chosen else {}
    result["chosen_frontend"] = front
    if dev.type == "cpu":
        result["conv_reuse"] = conv_reuse_share(assets["wavlm"], one, cfg.repeats)

    stream_files = []
    for i in range(max(max(cfg.streams), max(cfg.naive_streams))):
        path = workdir / f"stream{i:03d}.wav"
        import soundfile as sf

        sf.write(str(path), speech(held_out, 40.0, start=7 * i), SAMPLE_RATE_HZ)
        stream_files.append(path)
    base = {"checkpoint": str(assets["checkpoint"]), "device": str(dev), "max_batch": cfg.max_batch}
    result["naive_throughput_streams"] = round(1000.0 * HOP_S / rows[0]["window_ms"], 2)
    result["naive_runs"], result["naive_capacity"] = capacity(
        {**base, "mode": "naive", "wavlm": str(assets["wavlm"])},
        cfg.naive_streams,
        stream_files,
        cfg,
        "naive daemon",
    )
    report(result)
    result["monitor_runs"], result["monitor_capacity"] = capacity(
        {**base, "mode": "monitor", "threads": cfg.threads, "frontend": front},
        cfg.streams,
        stream_files,
        cfg,
        "monitor daemon",
    )
    report(result)
    return result


@torch.inference_mode()
def conv_reuse_share(wavlm_dir: Path, window: np.ndarray, repeats: int) -> dict[str, float]:
    """What reusing the convolutional encoder's frames across overlapping windows could save: its cost on a
    3 s window against on the 1 s of new audio (plus its 400-sample receptive field)."""
    from transformers import WavLMModel

    conv = WavLMModel.from_pretrained(str(wavlm_dir)).feature_extractor.eval()
    dev = torch.device("cpu")
    full = torch.from_numpy(window)[None]
    new = full[:, : int(HOP_S * SAMPLE_RATE_HZ) + 80]
    full_ms = _median_ms(lambda: conv(full), repeats, dev)
    new_ms = _median_ms(lambda: conv(new), repeats, dev)
    return {"conv_window_ms": full_ms, "conv_new_audio_ms": new_ms, "saved_ms": full_ms - new_ms}


def batching_knee(curve: Mapping[Any, float], gain: float = 0.10) -> int | None:
    """The batch size after which doubling saves less than ``gain`` of the per-window time."""
    sizes = sorted(int(b) for b in curve)
    for a, b in zip(sizes, sizes[1:]):
        if (
            curve[str(b) if str(b) in curve else b]
            > (1 - gain) * curve[str(a) if str(a) in curve else a]
        ):
            return a
    return sizes[-1] if sizes else None


# ---------------------------------------------------------------- markdown
def markdown(result: dict[str, Any]) -> str:
    """The tables of BENCHMARKS.md from one run's result."""
    lines = [
        f"device {result['device']}, monitor threads {result['threads']}, head {result['head']['d_model']}-dim "
        f"(fitted on {result['train_files']} files), agreement on held-out speech",
        "",
        "| path | front end ms/window | head ms/window | whole ms/window | label agreement | max prob diff | warm-up s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result.get("per_window", []):
        agree = f"{100 * r['label_agreement']:.1f}%" if "label_agreement" in r else "reference"
        diff = f"{r['max_prob_diff']:.4f}" if "max_prob_diff" in r else "-"
        lines.append(
            f"| {r['what']} ({r['threads']} threads) | {r['frontend_ms']:.0f} | {r['head_ms']:.1f} | "
            f"{r['window_ms']:.0f} | {agree} | {diff} | {r.get('warm_up_s', '-')} |"
        )
    lines += [
        "",
        f"exact fp32 labels over the agreement windows: {result.get('exact_label_spread')}",
        f"monitor's front end: {result.get('chosen_frontend')}",
        "",
    ]
    if "conv_reuse" in result:
        c = result["conv_reuse"]
        lines += [
            f"conv encoder: {c['conv_window_ms']:.0f} ms per 3 s window, {c['conv_new_audio_ms']:.0f} ms "
            f"for the 1 s of new audio (what frame reuse could save: {c['saved_ms']:.0f} ms per window)",
            "",
        ]
    lines += [
        "| daemon | streams | estimates | p50 ms | p99 ms | max ms | skipped stale | gated silent | RSS MB serving (peak) | start-up s | holds |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for kind, runs in (
        ("naive", result.get("naive_runs", [])),
        ("monitor", result.get("monitor_runs", [])),
    ):
        for r in runs:
            lines.append(
                f"| {kind} | {r['streams']} | {r['estimates']} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | "
                f"{r['max_ms']:.0f} | {r['skipped_stale']} | {r['skipped_silence']} | "
                f"{r.get('rss_mb', float('nan')):.0f} ({r['peak_rss_mb']:.0f}) | "
                f"{r.get('load_s', '-')} | {'yes' if r['holds'] else 'no'} |"
            )
    lines += [
        "",
        f"capacity (streams kept in real time, p99 < {result['p99_limit_ms']:.0f} ms, nothing skipped): "
        f"naive {result.get('naive_capacity', '?')} (its per-window time allows "
        f"{result.get('naive_throughput_streams', '?')} stream(s)), monitor {result.get('monitor_capacity', '?')}",
    ]
    curves = {r["what"]: r["batching"] for r in result.get("per_window", []) if "batching" in r}
    if curves:
        lines += [
            "",
            "| path | "
            + " | ".join(f"batch {b}" for b in next(iter(curves.values())))
            + " | knee |",
            "|---|" + "---:|" * (len(next(iter(curves.values()))) + 1),
        ]
        for what, curve in curves.items():
            lines.append(
                f"| {what} ms/window | "
                + " | ".join(f"{v:.1f}" for v in curve.values())
                + f" | {batching_knee(curve)} |"
            )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """Subprocess entry: ``python -m streamer.bench_live SPEC.json OUT.json`` runs one daemon."""
    logging.basicConfig(level=logging.WARNING)
    spec = json.loads(Path(argv[0]).read_text())
    out = asyncio.run(_daemon_main(spec))
    Path(argv[1]).write_text(json.dumps(out, default=float))
    # An overloaded worker may still be inside a batch (its join timed out): leave without
    # tearing the interpreter down under it.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
