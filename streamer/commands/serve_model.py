"""``emotion-monitor serve-model``: the model as a shared Ray Serve tier for many gateways.

Reads the same config as the gateways (``model``, ``windowing.window_s``,
``worker.max_batch``, ``worker.max_wait_ms`` and ``worker.ray``). With
``worker.ray.address`` null it starts a local Ray (tests, one machine);
otherwise it deploys to the running cluster at that address. It runs until
SIGINT or SIGTERM, then deletes the application (and stops the local Ray it
started). docs/scale-out.md.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from types import FrameType
from typing import Any

from dropformer.configio import validate
from dropformer.errors import EmotionMonitorError
from streamer.config import DaemonConfig

HELP = "serve the model as a shared Ray Serve inference tier (worker.backend: ray)"
SET_EXAMPLE = "worker.ray.max_replicas=4"
log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--num-cpus",
        type=int,
        default=None,
        help="CPUs of the local Ray it starts when worker.ray.address is null (default: all)",
    )


def main(args: argparse.Namespace, config: dict[str, Any]) -> int:
    cfg = validate(DaemonConfig, config, source="daemon config")
    from streamer.ray_backend import import_ray

    ray, serve = import_ray()
    from streamer import serve_app
    from streamer.sources.base import OUTPUT_RATE_HZ

    r = cfg.worker.ray
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("%s: shutting down", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    local = r.address is None
    try:
        if local:
            ray.init(address="local", num_cpus=args.num_cpus, logging_level=logging.WARNING)
        else:
            ray.init(address=r.address, logging_level=logging.WARNING)
        try:
            try:
                serve_app.deploy(
                    cfg.model, cfg.worker, round(cfg.windowing.window_s * OUTPUT_RATE_HZ)
                )
            except Exception as exc:  # Serve's errors carry the replica's traceback
                raise EmotionMonitorError(
                    f"deploying {r.app_name!r} failed: {' '.join(str(exc).split())[-1500:]}; "
                    "check model.checkpoint and model.device (the replicas load them) and "
                    "the resources in worker.ray (num_gpus, num_cpus)"
                ) from None
            gcs = ray.get_runtime_context().gcs_address
            log.info(
                "serving %r; gateways on this cluster connect with --set worker.backend=ray "
                "--set worker.ray.address=%s --set worker.ray.app_name=%s (Ctrl-C stops)",
                r.app_name,
                r.address if r.address and r.address != "auto" else gcs,
                r.app_name,
            )
            print(f"serve-model ready: app {r.app_name} on {gcs}", flush=True)
            stop.wait()
        finally:
            try:
                serve.delete(r.app_name)
                log.info("application %r deleted", r.app_name)
                if local:
                    serve.shutdown()
            finally:
                ray.shutdown()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
