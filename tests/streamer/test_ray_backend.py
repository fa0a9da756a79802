"""The shared inference tier on Ray Serve (worker.backend: ray), with a real local Ray
cluster, the shipped log-mel checkpoint and real speech:

- gateways (this test process and an ``emotion-monitor run`` subprocess) share one
  Serve deployment and get the local worker's answers;
- a gateway started before the application waits and connects when
  ``emotion-monitor serve-model`` deploys it; SIGINT stops serve-model cleanly;
- a killed replica is replaced by Serve; the gateway reports lagging, then recovers;
- a deleted application deployed again (serve-model restarted): the gateway reconnects;
- the replica answers windows past their deadline ``skipped="stale"``; the gateway's
  bounded queue evicts the oldest.

The gateways run in this process as Ray drivers of the test's cluster (and one as a
subprocess), as a daemon with ``worker.ray.address: auto`` would on a cluster node.
One cluster (2 CPUs, no dashboard) is shared by the module; Ray's start-up is slow.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from dropformer.configio import validate
from dropformer.errors import ConfigError
from streamer.config import DaemonConfig
from streamer.core.events import EmotionEstimate, Event, StreamStatus
from streamer.core.stream import InferenceRequest, WindowRequest
from streamer.daemon import Daemon
from streamer.worker import InferenceOutcome

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "emodb"
APP = "emotion-model"
CHECKPOINT = "emodb_logmel"
REPLICA = {"num_cpus": 0.5, "retry_min_s": 0.2, "retry_max_s": 1.0}


def ray_missing() -> str | None:
    try:
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
    except ImportError as exc:
        return f"Ray Serve is not installed ({exc}); pip install 'emotion-monitor[ray]' (CI does)"
    return None


needs_ray = pytest.mark.skipif(ray_missing() is not None, reason=str(ray_missing()))


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A local Ray cluster with the shared application up; yields its GCS address."""
    import logging

    import ray
    from ray import serve

    from streamer import serve_app

    # replicas and gateway subprocesses import this checkout
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p
    )
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    try:
        cfg = config([], app=APP)
        serve_app.deploy(cfg.model, cfg.worker, 48000)
        yield str(ray.get_runtime_context().gcs_address)
    finally:
        serve.shutdown()
        ray.shutdown()


def config(
    files: list[str], *, app: str = APP, realtime: bool = False, loop: bool = False, **extra: Any
) -> DaemonConfig:
    streams = [
        {"id": f"s{i}", "source": {"path": str(DATA / f), "realtime": realtime, "loop": loop}}
        for i, f in enumerate(files)
    ]
    return validate(
        DaemonConfig,
        {
            "model": {"checkpoint": CHECKPOINT, "threads": 1},
            "worker": {"backend": "ray", "ray": {"app_name": app, **REPLICA}},
            "streams": streams or [{"id": "unused"}],
            "publish": {"websocket": {"enabled": False}},
            # short windows: several per file
            "windowing": {"window_s": 1.5, "hop_s": 0.25, "min_window_s": 1.0},
            "status_interval_s": None,
            **extra,
        },
        source="test config",
    )


class Recorder:
    """Runs a daemon and keeps every event it publishes and every outcome its backend gives."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.events: list[Event] = []
        # (request kind, stream id, seq) -> outcome: windows and whole utterances
        self.outcomes: dict[tuple[str, str, int], InferenceOutcome] = {}
        self.published: list[dict[str, Any]] = []  # what the hub got (statuses with their detail)
        publish, infer, hub_publish = daemon.publish, daemon.backend.infer, daemon.hub.publish

        def record_published(event: dict[str, Any]) -> Any:
            self.published.append(event)
            return hub_publish(event)

        def record_event(event: Event) -> None:
            self.events.append(event)
            publish(event)

        async def record_outcome(
            request: InferenceRequest, *, deadline_s: float | None
        ) -> InferenceOutcome:
            outcome = await infer(request, deadline_s=deadline_s)
            self.outcomes[(type(request).__name__, request.stream_id, request.seq)] = outcome
            return outcome

        daemon.publish = record_event  # type: ignore[method-assign]
        daemon.hub.publish = record_published  # type: ignore[method-assign,assignment]
        daemon.backend.infer = record_outcome  # type: ignore[method-assign]

    def estimates(self) -> list[EmotionEstimate]:
        return [e for e in self.events if isinstance(e, EmotionEstimate)]


async def run_recorded(cfg: DaemonConfig) -> Recorder:
    daemon = Daemon(cfg)
    async with daemon:
        rec = Recorder(daemon)
        await daemon.run()
    return rec


def jsonl(path: Path, *, importance: bool = True) -> dict[str, Any]:
    """Publishers: estimates to ``path`` only."""
    return {
        "websocket": {"enabled": False},
        "jsonl": {"enabled": True, "path": str(path), "importance": importance},
    }


def fresh_env() -> dict[str, str]:
    """This process's environment without what ray.init put there: a subprocess joins the
    cluster as a separately started gateway would (with the cluster's token file only)."""
    return {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}


async def start_gateway(cfg: Any, config_file: Path) -> asyncio.subprocess.Process:
    """`emotion-monitor run --config config_file` with ``cfg`` written there; output on stdout."""
    await asyncio.to_thread(config_file.write_text, json.dumps(cfg.model_dump(mode="json")))
    return await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "streamer.cli", "run", "--config", str(config_file)],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=fresh_env(),
    )


def test_backend_ray_without_ray_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from streamer.ray_backend import import_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(ConfigError, match=r"emotion-monitor\[ray\]"):
        import_ray()


def test_ray_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match="worker.ray.min_replicas"):
        validate(
            DaemonConfig,
            {"worker": {"backend": "ray", "ray": {"min_replicas": 3, "max_replicas": 2}}},
            source="x",
        )
    assert validate(DaemonConfig, {}, source="x").worker.backend == "local"


@needs_ray
async def test_gateways_get_the_local_workers_answers(cluster: str, tmp_path: Path) -> None:
    files_a = ["03a01Wa.wav", "10a02Fa.wav", "16a02Tc.wav"]
    files_b = ["03a01Fa.wav", "10a07Ta.wav", "03a02Ta.wav"]
    # gateway process A: `emotion-monitor run`, estimates to JSONL
    out_a = tmp_path / "a.jsonl"
    cfg_a = config(files_a, publish=jsonl(out_a, importance=False))
    cfg_a.worker.ray.address = cluster
    proc = await start_gateway(cfg_a, tmp_path / "a.json")
    try:
        # gateway B: this process, at the same time (with token importance)
        remote_b = await run_recorded(config(files_b, publish=jsonl(tmp_path / "b.jsonl")))
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
    finally:
        if proc.returncode is None:
            proc.kill()
    assert proc.returncode == 0, out.decode()[-3000:]
    remote_a = [
        e
        for e in map(json.loads, out_a.read_text().splitlines())
        if e["type"] == "emotion.estimate"
    ]
    local_cfg = config(files_a + files_b, publish=jsonl(tmp_path / "local.jsonl"))
    local_cfg.worker.backend = "local"
    local = await run_recorded(local_cfg)

    # B: every window's probabilities within 1e-5 of the local worker's, same labels
    # (B's streams are s0..s2 of its own config; the local run has them as s3..s5)
    assert len(remote_b.outcomes) >= 8
    kinds = {kind for kind, _, _ in remote_b.outcomes}
    assert kinds == {"WindowRequest", "UtteranceRequest"}  # windows and whole utterances
    for (kind, sid, seq), outcome in remote_b.outcomes.items():
        ref = local.outcomes[(kind, f"s{int(sid[1:]) + 3}", seq)]
        assert outcome.skipped is None and outcome.probs is not None and ref.probs is not None
        np.testing.assert_allclose(outcome.probs, ref.probs, atol=1e-5)
        assert (outcome.tokens_in, outcome.tokens_kept) == (ref.tokens_in, ref.tokens_kept)
        assert outcome.importance is not None and ref.importance is not None
        np.testing.assert_allclose(outcome.importance.values, ref.importance.values, atol=1e-5)
        assert (outcome.importance.dropped == ref.importance.dropped).all()
    labels_b = [(e.stream_id, e.seq, e.label) for e in remote_b.estimates()]
    labels_local = [
        (f"s{int(e.stream_id[1:]) - 3}", e.seq, e.label)
        for e in local.estimates()
        if int(e.stream_id[1:]) >= 3
    ]
    assert sorted(labels_b) == sorted(labels_local)
    # A (another process): the published estimates equal the local run's (4-digit scores)
    local_a = {(e.stream_id, e.seq): e for e in local.estimates() if int(e.stream_id[1:]) < 3}
    assert len(remote_a) == len(local_a) >= 8
    for e in remote_a:
        mine = local_a[(e["stream_id"], e["seq"])]
        assert e["label"] == mine.label
        for label, p in mine.raw.items():
            assert abs(e["raw"][label] - p) <= 1e-4
    assert remote_b.daemon.health()["worker"]["backend"] == "ray"


@needs_ray
async def test_gateway_waits_for_serve_model(cluster: str, tmp_path: Path) -> None:
    """A gateway started before the application waits, then connects when
    `emotion-monitor serve-model` deploys it; SIGINT stops serve-model cleanly."""
    from ray import serve

    app = "late-app"
    cfg = config(["03a01Wa.wav"], app=app)
    task = asyncio.create_task(run_recorded(cfg))
    await asyncio.sleep(3.0)
    assert not task.done()  # waiting for the application, not failing
    server = await asyncio.create_subprocess_exec(
        *[
            sys.executable,
            "-m",
            "streamer.cli",
            "serve-model",
            "--set",
            f"worker.ray.address={cluster}",
            "--set",
            f"worker.ray.app_name={app}",
            "--set",
            f"model.checkpoint={CHECKPOINT}",
            "--set",
            "worker.ray.num_cpus=0.5",
        ],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=fresh_env(),
    )
    try:
        rec = await asyncio.wait_for(task, 120)
        assert rec.estimates() and all(o.probs is not None for o in rec.outcomes.values())
        assert rec.daemon.health()["worker"]["connects"] >= 1
        server.send_signal(signal.SIGINT)
        out, _ = await asyncio.wait_for(server.communicate(), 60)
        assert server.returncode == 0, out.decode()[-3000:]
        assert b"serve-model ready" in out
    finally:
        if server.returncode is None:
            server.kill()
    assert app not in serve.status().applications  # deleted on shutdown
    assert APP in serve.status().applications  # the shared one is untouched


def replica_actor(app: str) -> Any:
    """The handle of one live replica of ``app`` (named actors: no dashboard needed)."""
    import ray

    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["name"].startswith(f"SERVE_REPLICA::{app}#"):
            return ray.get_actor(actor["name"], namespace=actor["namespace"])
    raise AssertionError(f"no replica of {app!r} among {ray.util.list_named_actors(True)}")


async def eventually(check: Any, what: str, timeout_s: float = 90.0) -> None:
    end = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


@needs_ray
async def test_killed_replica_is_replaced_and_the_gateway_recovers(cluster: str) -> None:
    import ray

    cfg = config(
        ["03a01Wa.wav", "10a02Fa.wav"],
        realtime=True,
        loop=True,
        status_interval_s=0.5,
    )
    daemon = Daemon(cfg)
    async with daemon:
        rec = Recorder(daemon)
        stop = asyncio.Event()
        run = asyncio.create_task(daemon.run(stop))
        await eventually(lambda: len(rec.estimates()) >= 4, "estimates before the kill")
        ray.kill(replica_actor(APP), no_restart=True)
        killed_at = len(rec.estimates())
        worker = daemon.health
        await eventually(lambda: worker()["worker"]["lagging"] is not None, "lagging reported")
        await eventually(
            lambda: any(
                e["type"] == "stream.status" and "inference lagging" in e.get("detail", "")
                for e in rec.published
            ),
            "lagging in stream.status",
        )
        await eventually(lambda: worker()["worker"]["lagging"] is None, "recovery")
        await eventually(
            lambda: {e.stream_id for e in rec.estimates()[killed_at:]} == {"s0", "s1"},
            "estimates on every stream after the recovery",
        )
        assert not run.done()  # no stream stopped, the gateway runs on
        health = worker()
        assert health["worker"]["failures"] + health["worker"]["skipped_stale"] > 0
        assert health["worker"]["replicas_seen"] >= 2  # the replacement answered
        stop.set()
        await run
    statuses = [e for e in rec.events if isinstance(e, StreamStatus)]
    assert [s.state for s in statuses if s.state in ("offline", "error")] == ["offline"] * 2


@needs_ray
async def test_deleted_application_is_redeployed_and_the_gateway_reconnects(cluster: str) -> None:
    """As when serve-model is stopped and started again: the running gateway backs off,
    looks the application up again, and goes on."""
    from ray import serve

    from streamer import serve_app

    cfg = config(["10a02Fa.wav"], realtime=True, loop=True, status_interval_s=0.5)
    daemon = Daemon(cfg)
    async with daemon:
        rec = Recorder(daemon)
        stop = asyncio.Event()
        run = asyncio.create_task(daemon.run(stop))
        await eventually(lambda: len(rec.estimates()) >= 2, "estimates before the deletion")
        await asyncio.to_thread(serve.delete, APP)
        await eventually(lambda: daemon.health()["worker"]["lagging"] is not None, "lagging")
        deleted_at = len(rec.estimates())
        await asyncio.sleep(2.0)  # a while without the application
        await asyncio.to_thread(serve_app.deploy, cfg.model, cfg.worker, 48000)
        await eventually(lambda: len(rec.estimates()) >= deleted_at + 3, "estimates again")
        health = daemon.health()["worker"]
        assert health["lagging"] is None and health["connected"]
        assert health["connects"] >= 2  # it looked the application up again
        assert not run.done()
        stop.set()
        await run


@needs_ray
async def test_stale_windows_are_skipped_and_a_full_queue_evicts_the_oldest(cluster: str) -> None:
    from ray import serve

    from streamer.config import RayConfig
    from streamer.ray_backend import RayServeBackend

    audio, _ = sf.read(DATA / "03a01Wa.wav", dtype="float32")
    speech = np.ascontiguousarray(audio[:24000])
    # the replica: a window whose deadline (wall clock) has passed is answered stale, not computed
    handle = serve.get_app_handle(APP)
    request = {"samples": speech, "norm": None, "importance": False, "probe": False}
    stale = await handle.remote({**request, "deadline": time.time() - 1.0})
    fresh = await handle.remote({**request, "deadline": time.time() + 30.0})
    assert stale["skipped"] == "stale" and stale["probs"] is None
    assert fresh["skipped"] is None and fresh["probs"].shape == (4,)
    # the gateway: at most queue_size windows wait; the oldest give way, answered stale
    async with RayServeBackend(RayConfig(app_name=APP), queue_size=2) as backend:
        requests = [WindowRequest("q", i, 0, len(speech), speech) for i in range(6)]
        outcomes = await asyncio.gather(*(backend.infer(r, deadline_s=None) for r in requests))
        assert [o.skipped for o in outcomes] == ["stale"] * 4 + [None, None]
        assert backend.stats.evicted == 4
        # a live window that cannot be sent before its deadline is skipped and counted
        late = await backend.infer(requests[0], deadline_s=-1.0)
        assert late.skipped == "stale" and backend.stats.skipped_stale == 1


@needs_ray
async def test_connect_timeout_names_the_fix(cluster: str) -> None:
    from dropformer.errors import EmotionMonitorError
    from streamer.config import RayConfig
    from streamer.ray_backend import RayServeBackend

    backend = RayServeBackend(
        RayConfig(app_name="never-deployed", connect_timeout_s=1.0, retry_min_s=0.2)
    )
    t0 = time.monotonic()
    with pytest.raises(EmotionMonitorError, match="serve-model.*connect_timeout_s"):
        async with backend:
            pass
    assert 0.9 < time.monotonic() - t0 < 10


@needs_ray
async def test_a_gateway_waiting_for_the_tier_stops_cleanly_on_sigterm(
    cluster: str, tmp_path: Path
) -> None:
    """SIGTERM while the daemon still starts (here: waiting for an application that is never
    deployed) cancels the start-up and exits 0, instead of waiting or being killed."""
    cfg = config(["03a01Wa.wav"], publish=jsonl(tmp_path / "a.jsonl"))
    cfg.worker.ray.address = cluster
    cfg.worker.ray.app_name = "not-deployed-yet"
    proc = await start_gateway(cfg, tmp_path / "a.json")
    try:
        assert proc.stdout is not None
        seen = b""
        while b"not-deployed-yet" not in seen:  # it says what it waits for
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            assert line, seen.decode()[-2000:]
            seen += line
        proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
    assert proc.returncode == 0, (seen + out).decode()[-2000:]
    assert b"stopped while starting" in seen + out
