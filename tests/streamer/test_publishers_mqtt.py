"""MqttPublisher against a real mosquitto broker with users and ACLs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from streamer.config import MqttConfig
from streamer.publishers.base import encode
from streamer.publishers.mqtt import MqttPublisher
from tests.fixtures.services import MosquittoBroker


@dataclass
class Received:
    """Messages a subscriber got: (topic, payload as JSON, retain flag)."""

    messages: list[tuple[str, dict[str, Any], bool]] = field(default_factory=list)

    def on(self, topic: str) -> list[dict[str, Any]]:
        return [p for t, p, _ in self.messages if t == topic]

    def retained(self) -> dict[str, dict[str, Any]]:
        return {t: p for t, p, r in self.messages if r}


@asynccontextmanager
async def subscriber(broker: MosquittoBroker, user: str = "robot") -> AsyncIterator[Received]:
    """A real MQTT 5 client subscribed to ``emotion/#`` while the block runs."""
    got = Received()
    async with broker.client(user) as client:
        await client.subscribe("emotion/#", qos=1)

        async def collect() -> None:
            async for m in client.messages:
                assert isinstance(m.payload, bytes)
                got.messages.append((str(m.topic), json.loads(m.payload), bool(m.retain)))

        task = asyncio.create_task(collect())
        try:
            yield got
        finally:
            task.cancel()
            await asyncio.wait([task])


async def eventually(pred: Callable[[], bool], what: str, timeout_s: float = 15.0) -> None:
    for _ in range(int(timeout_s / 0.02)):
        if pred():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def daemon(broker: MosquittoBroker, **kw: Any) -> MqttPublisher:
    return MqttPublisher(
        MqttConfig(
            host=broker.host,
            port=broker.port,
            username="daemon",
            password=broker.users["daemon"],
            reconnect_min_s=0.1,
            reconnect_max_s=0.5,
            **kw,
        )
    )


def status(sid: str, state: str) -> dict[str, Any]:
    return {"type": "stream.status", "v": 1, "stream_id": sid, "state": state}


def estimate(sid: str, seq: int) -> dict[str, Any]:
    return {"type": "emotion.estimate", "v": 1, "stream_id": sid, "seq": seq, "label": "angry"}


def transition(sid: str, label: str) -> dict[str, Any]:
    return {
        "type": "emotion.transition",
        "v": 1,
        "stream_id": sid,
        "from": "neutral",
        "label": label,
    }


async def test_robot_sees_estimates_and_late_joiners_get_retained_state(
    mosquitto_broker: MosquittoBroker,
) -> None:
    async with subscriber(mosquitto_broker) as live, daemon(mosquitto_broker) as pub:
        await eventually(lambda: pub.connected, "the publisher to connect")
        pub.publish(encode(status("mic0", "speech")))
        for i in range(3):
            pub.publish(encode(estimate("mic0", i)))
        pub.publish(encode(transition("mic0", "angry")))
        pub.publish(
            encode({"type": "alert", "v": 1, "stream_id": "mic0", "message": "anger for 10 s"})
        )
        pub.publish(encode(estimate("call/1+#", 0)))  # topic-unsafe stream id
        await eventually(lambda: len(live.on("emotion/call_1__/estimate")) == 1, "all messages")
        assert [e["seq"] for e in live.on("emotion/mic0/estimate")] == [0, 1, 2]
        assert live.on("emotion/mic0/state") == [transition("mic0", "angry")]
        assert live.on("emotion/mic0/status") == [status("mic0", "speech")]
        assert live.on("emotion/mic0/alert")[0]["message"] == "anger for 10 s"
        assert pub.stats.published == 7 and pub.stats.dropped == 0

        async with subscriber(mosquitto_broker) as late:
            await eventually(lambda: len(late.messages) >= 3, "retained messages")
            await asyncio.sleep(0.2)  # anything else would have arrived by now
        assert late.retained() == {
            "emotion/mic0/status": status("mic0", "speech"),
            "emotion/mic0/state": transition("mic0", "angry"),
            "emotion/_daemon/status": {"type": "daemon.status", "v": 1, "state": "online"},
        }
        assert not late.on("emotion/mic0/estimate")  # estimates are not retained

    # A graceful close marks every stream (and the daemon) offline, retained.
    async with subscriber(mosquitto_broker) as after:
        await eventually(lambda: len(after.messages) >= 3, "retained messages after close")
    retained = after.retained()
    assert retained["emotion/mic0/status"]["state"] == "offline"
    assert retained["emotion/call_1__/status"]["state"] == "offline"
    assert retained["emotion/_daemon/status"]["state"] == "offline"


async def test_last_will_marks_the_daemon_offline_when_it_dies(
    mosquitto_broker: MosquittoBroker,
) -> None:
    script = textwrap.dedent(f"""
        import asyncio, sys
        from streamer.config import MqttConfig
        from streamer.publishers.base import encode
        from streamer.publishers.mqtt import MqttPublisher
        async def main():
            async with MqttPublisher(MqttConfig(host={mosquitto_broker.host!r}, port={mosquitto_broker.port},
                                     keepalive_s=2, username="daemon",
                                     password={mosquitto_broker.users["daemon"]!r})) as p:
                while not p.connected:
                    await asyncio.sleep(0.02)
                p.publish(encode({{"type": "stream.status", "v": 1, "stream_id": "mic0", "state": "online"}}))
                while p.stats.published < 1:
                    await asyncio.sleep(0.02)
                print("ready", flush=True)
                await asyncio.sleep(3600)
        asyncio.run(main())
    """)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=subprocess.PIPE, cwd=os.getcwd()
    )
    try:
        async with subscriber(mosquitto_broker) as live:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            assert line.strip() == b"ready"
            await eventually(lambda: bool(live.on("emotion/_daemon/status")), "daemon online")
            assert live.on("emotion/_daemon/status")[-1]["state"] == "online"
            proc.send_signal(signal.SIGKILL)
            await eventually(
                lambda: live.on("emotion/_daemon/status")[-1]["state"] == "offline",
                "the last will",
            )
        assert live.on("emotion/_daemon/status")[-1]["reason"] == "connection lost"
        # The stream's own status keeps its last value: clients combine both.
        assert live.on("emotion/mic0/status")[-1]["state"] == "online"
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def test_wrong_password_is_reported_not_raised(mosquitto_broker: MosquittoBroker) -> None:
    async with MqttPublisher(
        MqttConfig(
            host=mosquitto_broker.host,
            port=mosquitto_broker.port,
            username="daemon",
            password="wrong",
            reconnect_min_s=0.1,
            reconnect_max_s=0.2,
        )
    ) as pub:
        for i in range(5):
            pub.publish(encode(estimate("mic0", i)))
        await eventually(lambda: pub.last_error is not None, "a connection error")
        assert "refused user 'daemon'" in str(pub.last_error)
        assert "mqtt.password" in str(pub.last_error)
        assert not pub.connected and pub.stats.published == 0
    assert pub.stats.dropped == 5 + 2  # undelivered: 5 estimates + 1 stream status + daemon status


async def test_queue_is_bounded_while_the_broker_is_down(mosquitto_broker: MosquittoBroker) -> None:
    mosquitto_broker.stop()
    async with daemon(mosquitto_broker, max_queue=10) as pub:
        for i in range(15):
            pub.publish(encode(estimate("mic0", i)))
        assert pub.stats.dropped == 5  # the 5 oldest
        await eventually(lambda: pub.last_error is not None, "a connection error")
        assert "cannot connect" in str(pub.last_error)
        mosquitto_broker.start()
        await eventually(lambda: pub.stats.published == 10, "the queued estimates to go out")


async def test_reconnects_after_a_broker_restart(mosquitto_broker: MosquittoBroker) -> None:
    async with daemon(mosquitto_broker) as pub:
        await eventually(lambda: pub.connected, "the publisher to connect")
        pub.publish(encode(status("mic0", "speech")))
        await eventually(lambda: pub.stats.published == 1, "the status to go out")
        await asyncio.to_thread(mosquitto_broker.restart)  # retained messages are lost with it
        await eventually(lambda: pub.connects == 2 and pub.connected, "a reconnect")
        async with subscriber(mosquitto_broker) as live:
            # Retained state is re-sent after every reconnect.
            await eventually(lambda: bool(live.on("emotion/mic0/status")), "retained status again")
            pub.publish(encode(estimate("mic0", 99)))
            await eventually(lambda: bool(live.on("emotion/mic0/estimate")), "a new estimate")
        assert live.on("emotion/mic0/estimate") == [estimate("mic0", 99)]
        assert live.on("emotion/mic0/status")[0]["state"] == "speech"


async def test_a_read_only_account_cannot_publish_commands_or_spoof_estimates(
    tmp_path: Any,
) -> None:
    """The ACL SECURITY.md recommends for a robot or dashboard account (read emotion/#, nothing
    else): what it publishes never reaches anyone, on the estimate topics or a command topic."""
    from tests.fixtures.services import _running_broker

    brokers = _running_broker(tmp_path / "broker", {"daemon": ["topic read robot/#"]})
    b = next(brokers)
    try:
        got: list[tuple[str, bytes]] = []
        async with b.client("daemon") as watcher:
            await watcher.subscribe("emotion/#", qos=1)
            await watcher.subscribe("robot/#", qos=1)

            async def collect() -> None:
                async for m in watcher.messages:
                    assert isinstance(m.payload, bytes)
                    got.append((str(m.topic), m.payload))

            reader = asyncio.create_task(collect())
            async with b.client() as robot:
                spoof = json.dumps(transition("mic0", "happy")).encode()
                await robot.publish("emotion/mic0/state", spoof, qos=1, retain=True)
                await robot.publish("emotion/mic0/estimate", spoof, qos=1)
                await robot.publish("robot/head/cmd", b'{"action": "calm_down"}', qos=1)
            await watcher.publish("emotion/marker", b"{}", qos=1)  # the daemon's own, allowed
            await eventually(lambda: any(t == "emotion/marker" for t, _ in got), "the marker")
            reader.cancel()
        assert [t for t, _ in got] == ["emotion/marker"]
        async with subscriber(b, "daemon") as late:  # nothing retained was planted either
            await asyncio.sleep(0.5)
        assert late.on("emotion/mic0/state") == []
    finally:
        with contextlib.suppress(StopIteration):
            next(brokers)
