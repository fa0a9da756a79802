"""Soak benchmark: the daemon analyses the equivalent of many hours of audio (faster
than real time) on several streams with every publisher on, while RSS, open files and
threads are sampled; growth after warm-up must stay under 5% (BENCHMARKS.md, issue 11).

What runs (all in this process, as ``emotion-monitor run`` would):

* ``--streams`` file streams replaying EmoDB utterances back to back (``--audio``, a
  folder of WAV files; default the bundled demo audio), looping, ``realtime: false``;
* the energy gate, the default windowing (3 s windows every 1 s), the bundled
  log-mel model;
* publishers: the WebSocket server with a client reading every message, MQTT to a
  private mosquitto started here (or ``--no-mqtt``), JSONL with rotation
  (``rotate_mb 2``, ``rotate_keep 3``, so files are deleted all along);
* a stream-status heartbeat every second (the loss report with it).

Run::

    .venv/bin/python tools/soak.py --hours 24 --streams 4 --out soak.json

It stops when the streams together have analysed ``--hours`` of audio, then prints
and writes the samples and the verdict: the growth of each sampled quantity from the
end of warm-up (the first ``--warmup`` share of the audio) to the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from dropformer.configio import validate
from streamer.config import DaemonConfig, demo_audio_path
from streamer.daemon import Daemon

log = logging.getLogger("soak")


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


def long_audio(folder: Path | None, out: Path) -> Path:
    """All WAV files of ``folder`` (16 kHz mono) back to back, with 0.5 s pauses."""
    if folder is None:
        return demo_audio_path()
    parts = []
    for p in sorted(folder.rglob("*.wav")):
        audio, rate = sf.read(p, dtype="float32", always_2d=True)
        if rate == 16000:
            parts += [audio.mean(axis=1), np.zeros(8000, np.float32)]
    sf.write(out, np.concatenate(parts), 16000)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_mosquitto(folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    conf = folder / "mosquitto.conf"
    conf.write_text(
        f"user root\npersistence false\nallow_anonymous true\nlistener {port} 127.0.0.1\n"
    )
    proc = subprocess.Popen(
        ["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("mosquitto did not start")


async def soak(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    audio = long_audio(Path(args.audio) if args.audio else None, work / "audio.wav")
    broker = None
    publish: dict[str, Any] = {
        "websocket": {"port": 0, "max_queue": 1000},
        "jsonl": {
            "enabled": True,
            "path": str(work / "events.jsonl"),
            "rotate_mb": 2,
            "rotate_keep": 3,
        },
    }
    if not args.no_mqtt and shutil.which("mosquitto"):
        broker, port = start_mosquitto(work)
        publish["mqtt"] = {"enabled": True, "port": port, "max_queue": 10000}
    cfg = validate(DaemonConfig, {
        "model": {"checkpoint": args.checkpoint, "threads": args.threads},
        "streams": [{"id": f"s{i}", "source": {"path": str(audio), "realtime": False, "loop": True}}
                    for i in range(args.streams)],
        "publish": publish, "status_interval_s": 1.0,
    })  # fmt: skip
    target_s = args.hours * 3600.0
    samples: list[dict[str, float]] = []
    received = 0
    t0 = time.monotonic()
    try:
        async with Daemon(cfg) as daemon:
            stop = asyncio.Event()
            runner = asyncio.create_task(daemon.run(stop))

            async def client() -> None:
                nonlocal received
                from websockets.asyncio.client import connect

                async with connect(
                    f"ws://127.0.0.1:{daemon.websocket.port}/ws", max_size=None
                ) as ws:
                    async for _ in ws:
                        received += 1

            reader = asyncio.create_task(client())
            while True:
                await asyncio.sleep(args.sample_s)
                audio_s = sum(c.windower.total_samples for c in daemon.cores.values()) / 16000
                health = daemon.health()
                samples.append({
                    "wall_s": round(time.monotonic() - t0, 1), "audio_s": round(audio_s, 1),
                    "rss_kb": rss_kb(), "open_files": open_files(), "threads": threading.active_count(),
                    "windows": sum(c.counters["windows"] for c in daemon.cores.values()),
                    "events": health["hub"]["events"], "ws_received": received,
                    "lost": sum(health["lost"].values()),
                })  # fmt: skip
                log.info("%s", samples[-1])
                if audio_s >= target_s or runner.done():
                    break
            stop.set()
            await runner
            reader.cancel()
            await asyncio.wait([reader])
        summary = daemon.summary
    finally:
        if broker is not None:
            broker.terminate()
            broker.wait(10)
    return {"samples": samples, "summary": summary}


def verdict(samples: list[dict[str, float]], warmup: float) -> dict[str, Any]:
    """Growth of RSS, open files and threads from the end of warm-up to the end."""
    end_audio = samples[-1]["audio_s"]
    after = [s for s in samples if s["audio_s"] >= warmup * end_audio]
    out: dict[str, Any] = {}
    for key in ("rss_kb", "open_files", "threads"):
        base = after[0][key]
        last = samples[-1][key]
        peak = max(s[key] for s in after)
        out[key] = {
            "after_warmup": base,
            "end": last,
            "peak": peak,
            "growth_pct": round(100.0 * (last - base) / base, 2),
            "peak_growth_pct": round(100.0 * (peak - base) / base, 2),
        }
    out["ok"] = all(v["growth_pct"] < 5.0 for v in out.values() if isinstance(v, dict))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--hours",
        type=float,
        default=24.0,
        help="audio to analyse, all streams together (default 24)",
    )
    ap.add_argument("--streams", type=int, default=4, help="concurrent file streams (default 4)")
    ap.add_argument(
        "--audio", default=None, help="folder of 16 kHz WAV files (default: the bundled demo audio)"
    )
    ap.add_argument("--checkpoint", default="emodb_logmel", help="model (default emodb_logmel)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument(
        "--sample-s", type=float, default=10.0, help="seconds between samples (default 10)"
    )
    ap.add_argument(
        "--warmup",
        type=float,
        default=0.1,
        help="share of the audio counted as warm-up (default 0.1)",
    )
    ap.add_argument("--no-mqtt", action="store_true", help="no MQTT publisher")
    ap.add_argument("--out", default=None, help="write samples, summary and verdict as JSON here")
    args = ap.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("streamer").setLevel(logging.WARNING)
    logging.getLogger("websockets").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        t0 = time.monotonic()
        result = asyncio.run(soak(args, Path(tmp)))
        wall_s = time.monotonic() - t0
    samples = result["samples"]
    result["verdict"] = verdict(samples, args.warmup)
    result["run"] = {
        "hours": args.hours,
        "streams": args.streams,
        "wall_s": round(wall_s, 1),
        "audio_s": samples[-1]["audio_s"],
        "speed_x": round(samples[-1]["audio_s"] / wall_s, 1),
        "cpu": _cpu(),
        "load_avg": os.getloadavg(),
    }
    print(json.dumps({k: result[k] for k in ("run", "verdict")}, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0 if result["verdict"]["ok"] else 1


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "?"


if __name__ == "__main__":
    raise SystemExit(main())
