"""The shared inference tier: the model as a Ray Serve deployment (docs/scale-out.md).

Each replica loads the checkpoint once, with :class:`streamer.engine.Engine`
exactly as the in-process worker does (so the answers are the same), and
batches requests from every gateway with ``@serve.batch`` (windows and whole
utterances alike; like the local worker it runs equal lengths together, so
nothing is padded). A window whose
deadline (wall-clock, ``time.time()``) has passed when its batch forms is not
computed and is answered ``skipped="stale"``, as the local worker does.

The wire format is plain data, so gateways and replicas share no classes but
numpy arrays (Ray serialises them without copies):

- request: ``{"samples": float32 (N,), "norm": (mean, std) | None,
  "deadline": float | None, "importance": bool, "probe": bool}``
- answer: ``{"probs": float32 (C,) | None, "tokens_in": int, "tokens_kept": int,
  "compute_ms": float, "batch_size": int, "moments": (count, mean, second) | None,
  "importance": (values, dropped, layer) | None, "skipped": str | None,
  "error": str | None, "replica": str}``

This module imports Ray at the top: only :mod:`streamer.ray_backend` (the
gateway side) and ``emotion-monitor serve-model`` import it, and only when
``worker.backend: ray`` is chosen.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import numpy as np
from ray import serve

from streamer.config import ModelConfig, WorkerConfig
from streamer.engine import Engine

log = logging.getLogger(__name__)

#: the deployment's name inside its application (the gateway reaches it through the app's name)
DEPLOYMENT_NAME = "EmotionModel"


def _error_text(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:200]


@serve.deployment(name=DEPLOYMENT_NAME)
class EmotionModel:
    """One replica: the engine, loaded once, behind a batching ``__call__``."""

    def __init__(
        self,
        model: dict[str, Any],
        *,
        max_batch: int,
        max_wait_ms: float,
        window_samples: int,
    ) -> None:
        self.engine = Engine.load(
            model.get("checkpoint"),
            device=model.get("device", "auto"),
            frontend_model=model.get("frontend_model"),
            threads=model.get("threads"),
            frontend_overrides=model.get("frontend") or None,
        )
        if model.get("warm_up", True):
            try:
                log.info("model warmed up in %.1f s", self.engine.warm_up(window_samples))
            except (RuntimeError, ValueError) as exc:  # the gateway's probe names the key
                log.debug("model warm-up skipped: %s", exc)
        batcher: Any = (
            self.run_batch
        )  # @serve.batch's wrapper (Ray's typing does not show its setters)
        batcher.set_max_batch_size(max_batch)
        batcher.set_batch_wait_timeout_s(max_wait_ms / 1000.0)
        self.replica = f"{os.uname().nodename}:{os.getpid()}"

    def describe(self) -> dict[str, Any]:
        """What a gateway needs before its streams start: labels, the model's description
        for events, and a fresh per-stream normaliser (None: the model needs none)."""
        return {
            "labels": list(self.engine.labels),
            "info": dict(self.engine.info),
            "normalizer": self.engine.new_normalizer(),
            "replica": self.replica,
        }

    async def __call__(self, request: dict[str, Any]) -> dict[str, Any]:
        if request.get("probe"):  # a start-up check: alone, failures are answered, not logged
            return self._probe(request["samples"])
        answer: dict[str, Any] = await self.run_batch(request)
        return answer

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def run_batch(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        now = time.time()
        answers: list[dict[str, Any]] = [self._answer(skipped="stale") for _ in requests]
        fresh = [
            i
            for i, r in enumerate(requests)
            if r.get("deadline") is None or now <= float(r["deadline"])
        ]
        if not fresh:
            return answers
        groups: dict[int, list[int]] = {}
        for i in fresh:  # equal lengths only, as the local worker: nothing is padded
            groups.setdefault(len(requests[i]["samples"]), []).append(i)
        for group in groups.values():
            self._run_group(requests, group, answers)
        return answers

    def _run_group(
        self, requests: list[dict[str, Any]], group: list[int], answers: list[dict[str, Any]]
    ) -> None:
        # Inline: Serve runs user code on its own event loop, apart from the replica's control
        # loop (health checks), and a thread hop per batch measured slower on a busy CPU.
        try:
            res = self.engine.run(
                [np.array(requests[i]["samples"], dtype=np.float32) for i in group],
                [_norm(requests[i].get("norm")) for i in group],
            )
        except Exception as exc:
            log.exception(
                "inference failed on a batch of %d requests; they are skipped", len(group)
            )
            for i in group:
                answers[i] = self._answer(skipped="error", error=_error_text(exc))
            return
        for k, i in enumerate(group):
            m = None if res.moments is None else res.moments[k]
            imp = None
            if requests[i].get("importance") and res.importance is not None:
                t = res.importance[k]
                imp = (t.values, t.dropped, t.layer)
            answers[i] = self._answer(
                probs=np.asarray(res.probs[k], dtype=np.float32),
                tokens_in=int(res.tokens_in[k]),
                tokens_kept=int(res.tokens_kept[k]),
                compute_ms=float(res.compute_ms),
                batch_size=len(group),
                moments=None if m is None else (m.count, m.mean, m.second),
                importance=imp,
            )

    def _probe(self, samples: np.ndarray) -> dict[str, Any]:
        try:
            self.engine.run([np.array(samples, dtype=np.float32)], [None])
        except Exception as exc:
            return self._answer(skipped="error", error=_error_text(exc))
        return self._answer()

    def _answer(self, **fields: Any) -> dict[str, Any]:
        answer: dict[str, Any] = {
            "probs": None,
            "tokens_in": 0,
            "tokens_kept": 0,
            "compute_ms": 0.0,
            "batch_size": 0,
            "moments": None,
            "importance": None,
            "skipped": None,
            "error": None,
            "replica": self.replica,
        }
        answer.update(fields)
        return answer


def _norm(norm: Any) -> tuple[np.ndarray, np.ndarray] | None:
    if norm is None:
        return None
    mean, std = norm
    # copies: arrays from Ray's object store are read-only, torch wants writable ones
    return np.array(mean), np.array(std)


def build_app(
    model: dict[str, Any],
    *,
    max_batch: int,
    max_wait_ms: float,
    window_samples: int,
    min_replicas: int,
    max_replicas: int,
    target_ongoing_requests: float,
    max_ongoing_requests: int,
    num_cpus: float,
    num_gpus: float,
) -> Any:
    """The Serve application (``serve.run`` it under the app name): autoscaled on ongoing
    requests between ``min_replicas`` and ``max_replicas``, ``num_gpus`` per replica."""
    deployment: Any = EmotionModel  # a serve.Deployment (Ray's typing says the class)
    deployment = deployment.options(
        autoscaling_config={
            "min_replicas": min_replicas,
            "initial_replicas": max(min_replicas, 1),
            "max_replicas": max_replicas,
            "target_ongoing_requests": target_ongoing_requests,
        },
        max_ongoing_requests=max(max_ongoing_requests, max_batch),
        ray_actor_options={"num_cpus": num_cpus, "num_gpus": num_gpus},
        logging_config={"enable_access_log": False},  # not one log line per window
    )
    return deployment.bind(
        model, max_batch=max_batch, max_wait_ms=max_wait_ms, window_samples=window_samples
    )


def deploy(model: ModelConfig, worker: WorkerConfig, window_samples: int) -> Any:
    """Start Serve (no HTTP proxy: gateways use handles) on the connected Ray cluster and run
    the application under ``worker.ray.app_name``; returns once its replicas are up."""
    import ray

    r = worker.ray
    num_gpus = r.num_gpus
    if num_gpus is None:
        num_gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    serve.start(proxy_location="Disabled")
    app = build_app(
        model.model_dump(mode="json"),
        max_batch=worker.max_batch,
        max_wait_ms=worker.max_wait_ms,
        window_samples=window_samples,
        min_replicas=r.min_replicas,
        max_replicas=r.max_replicas,
        target_ongoing_requests=r.target_ongoing_requests,
        max_ongoing_requests=r.max_ongoing_requests,
        num_cpus=r.num_cpus,
        num_gpus=num_gpus,
    )
    log.info(
        "deploying %r: %d..%d replicas, %g GPU and %g CPU each, batches of up to %d (%g ms wait)",
        r.app_name,
        r.min_replicas,
        r.max_replicas,
        num_gpus,
        r.num_cpus,
        worker.max_batch,
        worker.max_wait_ms,
    )
    return serve.run(app, name=r.app_name, route_prefix=None)
