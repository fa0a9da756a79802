"""The broker is killed and restarted 10 times while three streams run (issue 11):
analysis never stops, WebSocket clients keep receiving, the retained state is right
after each reconnect, and every estimate that did not reach the broker is counted in
its stream's ``lost_mqtt`` exactly.

The daemon reaches the broker through a TCP relay the test controls, so that after
each restart the observer is subscribed before the daemon is let back in: then what
the observer got plus what the daemon counted lost is every estimate, exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from pathlib import Path
from typing import Any

import aiomqtt
import numpy as np
import pytest
import soundfile as sf
from websockets.asyncio.client import connect

from dropformer.configio import validate
from streamer.config import DaemonConfig
from streamer.core.events import validate_event
from streamer.daemon import Daemon
from tests.fixtures.network import Tap, eventually
from tests.fixtures.services import MosquittoBroker, free_port

DATA = Path(__file__).resolve().parents[1] / "data" / "emodb"
STREAMS = ("a", "b", "c")
RESTARTS = 10


class Relay:
    """A TCP relay to the broker that the test can shut (connections refused, open ones cut)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self._pipes: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Relay:
        await self.reopen()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.shut()

    async def reopen(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def shut(self) -> None:
        """Refuse new connections (as a dead host does) and cut the open ones."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for w in list(self._pipes):
            w.close()
        if server is not None:
            await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        self._pipes.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._pipes.difference_update((writer, up_writer))


class Observer:
    """An MQTT client (the read-only robot account) that stays subscribed, reconnecting at once."""

    def __init__(self, broker: MosquittoBroker) -> None:
        self.broker = broker
        self.messages: list[tuple[str, dict[str, Any], bool]] = []
        self.subscribed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        b = self.broker
        while True:
            try:
                async with b.client() as client:
                    await client.subscribe(
                        "emotion/#", qos=0
                    )  # no acks of ours in the broker's buffers
                    self.subscribed.set()
                    async for m in client.messages:
                        assert isinstance(m.payload, bytes)
                        if m.payload:
                            self.messages.append(
                                (str(m.topic), json.loads(m.payload), bool(m.retain))
                            )
            except aiomqtt.MqttError:
                self.subscribed.clear()
                await asyncio.sleep(0.05)

    def estimates(self, sid: str) -> set[int]:
        return {p["seq"] for t, p, _ in self.messages if t == f"emotion/{sid}/estimate"}

    async def __aenter__(self) -> Observer:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.wait([self._task])


async def retained_now(broker: MosquittoBroker) -> dict[str, dict[str, Any]]:
    """What a client that connects now is told: the retained payload of each topic."""
    got: dict[str, dict[str, Any]] = {}
    async with broker.client() as client:
        await client.subscribe("emotion/#", qos=0)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.5):
                async for m in client.messages:
                    if m.retain and isinstance(m.payload, bytes) and m.payload:
                        got[str(m.topic)] = json.loads(m.payload)
    return got


@pytest.mark.timeout(240)
async def test_broker_killed_ten_times(
    mosquitto_broker: MosquittoBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    b = mosquitto_broker
    audio = np.concatenate(
        [sf.read(DATA / n, dtype="float32")[0] for n in ("03a01Wa.wav", "16a02Tc.wav")]
    )
    sf.write(tmp_path / "talk.wav", audio, 16000)
    ws_got: list[dict[str, Any]] = []
    async with Relay(b.port) as relay, Observer(b) as observer:
        cfg = validate(DaemonConfig, {
            "model": {"checkpoint": "emodb_logmel"},
            "streams": [{"id": s, "source": {"path": str(tmp_path / "talk.wav"), "loop": True}} for s in STREAMS],
            "gate": {"kind": "none"}, "windowing": {"window_s": 1.0, "hop_s": 0.5, "min_window_s": 0.5},
            "status_interval_s": 1.0,
            "publish": {"websocket": {"port": 0}, "mqtt": {
                "enabled": True, "port": relay.port, "username": "daemon", "password": b.users["daemon"],
                "max_queue": 5, "reconnect_min_s": 0.1, "reconnect_max_s": 0.4, "keepalive_s": 2}},
        })  # fmt: skip
        with caplog.at_level(logging.INFO):
            async with Daemon(cfg) as daemon:
                tap = Tap(daemon)
                mqtt: Any = next(p for name, p in daemon.hub.publishers if name == "mqtt")
                stop = asyncio.Event()
                runner = asyncio.create_task(daemon.run(stop))

                async def watch() -> None:
                    async with connect(f"ws://127.0.0.1:{daemon.websocket.port}/ws") as ws:
                        async for raw in ws:
                            ws_got.append(json.loads(raw))

                watcher = asyncio.create_task(watch())
                try:
                    await eventually(
                        lambda: mqtt.connected and all(observer.estimates(s) for s in STREAMS),
                        "estimates on the broker",
                        60,
                    )
                    for cycle in range(RESTARTS):
                        await asyncio.sleep(1.0)
                        n_tap, n_ws = len(tap.of("emotion.estimate")), len(ws_got)
                        await (
                            relay.shut()
                        )  # (the daemon comes back only once the observer is there again)
                        await asyncio.to_thread(b.stop, signal.SIGKILL)  # the broker dies
                        await asyncio.sleep(1.0)  # an outage: analysis and the WebSocket go on
                        await asyncio.to_thread(b.start)
                        await asyncio.wait_for(observer.subscribed.wait(), 20)
                        await relay.reopen()
                        await eventually(
                            lambda c=cycle: (
                                mqtt.connects == c + 2
                                and mqtt.connected
                                and mqtt.health()["retained_pending"] == 0
                            ),
                            f"reconnect {cycle}",
                            30,
                        )
                        assert len(tap.of("emotion.estimate")) > n_tap + 3, "analysis stopped"
                        assert (
                            len([e for e in ws_got[n_ws:] if e["type"] == "emotion.estimate"]) > 3
                        )
                        # a client that connects now is told the current label and status of each stream
                        before = {s: tap.of("emotion.transition", s)[-1] for s in STREAMS}
                        retained = await retained_now(b)
                        for s in STREAMS:
                            state = retained[f"emotion/{s}/state"]
                            assert (
                                state == before[s] or state in tap.of("emotion.transition", s)[-3:]
                            )
                            assert retained[f"emotion/{s}/status"]["state"] in ("speech", "online")
                        assert retained["emotion/_daemon/status"]["state"] == "online"
                finally:
                    stop.set()
                    await asyncio.wait_for(runner, 60)
                    watcher.cancel()
                    await asyncio.wait([watcher])
            await eventually(lambda: all(observer.estimates(s) for s in STREAMS), "the last ones")
    summary = daemon.summary
    assert summary is not None
    lost_total = 0
    for s in STREAMS:
        published = {e["seq"] for e in tap.of("emotion.estimate", s)}
        received = observer.estimates(s)
        lost = summary["streams"][s]["lost_mqtt"]
        assert received <= published
        assert len(received) + lost == len(published), (s, len(received), lost, len(published))
        assert tap.final_status(s)["counters"]["lost_mqtt"] <= lost  # the status said so too
        lost_total += lost
    assert (
        lost_total > 0 and summary["lost"]["lost_mqtt"] == lost_total
    )  # max_queue 5: outages lost some
    assert "lost so far: " in caplog.text and "lost while disconnected" in caplog.text
    for _, payload, _ in observer.messages:
        validate_event(payload)  # retained ones too
    # the WebSocket client got every estimate, through every outage
    ws_est = {(e["stream_id"], e["seq"]) for e in ws_got if e["type"] == "emotion.estimate"}
    assert ws_est >= {(e["stream_id"], e["seq"]) for e in tap.of("emotion.estimate")[:-10]}
