"""MQTT over TLS against a real mosquitto with a certificate made by openssl."""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest

from streamer.config import MqttConfig, MqttTlsConfig
from streamer.publishers.base import encode
from streamer.publishers.mqtt import MqttPublisher
from tests.fixtures.services import _stop, free_port, require_binary, wait_for_port


def make_certs(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is needed to make test certificates (apt-get install openssl)")
    ca_key, ca, key, csr, crt = (
        folder / n for n in ("ca.key", "ca.crt", "server.key", "server.csr", "server.crt")
    )
    ext = folder / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    for cmd in (
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            ca_key,
            "-out",
            ca,
            "-days",
            "2",
            "-subj",
            "/CN=test-ca",
        ],
        [
            openssl,
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            key,
            "-out",
            csr,
            "-subj",
            "/CN=127.0.0.1",
        ],
        [
            openssl,
            "x509",
            "-req",
            "-in",
            csr,
            "-CA",
            ca,
            "-CAkey",
            ca_key,
            "-CAcreateserial",
            "-out",
            crt,
            "-days",
            "2",
            "-extfile",
            ext,
        ],
    ):
        subprocess.run([str(c) for c in cmd], check=True, capture_output=True)
    return ca, crt, key


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    require_binary("mosquitto", "mosquitto")
    ca, crt, key = make_certs(tmp_path)
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        "user root\npersistence false\nallow_anonymous true\n"
        f"listener {port} 127.0.0.1\ncafile {ca}\ncertfile {crt}\nkeyfile {key}\n"
    )
    log = (tmp_path / "mosquitto.log").open("wb")
    proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=log, stderr=log)
    try:
        wait_for_port("127.0.0.1", port, 10.0, proc)
        yield port, ca
    finally:
        _stop(proc)
        log.close()


async def test_publishes_over_tls_and_refuses_an_unknown_ca(
    tls_broker: tuple[int, Path], tmp_path: Path
) -> None:
    port, ca = tls_broker
    ctx = ssl.create_default_context(cafile=str(ca))
    received: list[dict[str, object]] = []

    async def subscriber(ready: asyncio.Event) -> None:
        async with aiomqtt.Client(
            "127.0.0.1", port, tls_context=ctx, protocol=aiomqtt.ProtocolVersion.V5
        ) as c:
            await c.subscribe("emotion/#", qos=1)
            ready.set()
            async for m in c.messages:
                received.append(json.loads(m.payload))
                if m.topic.matches("emotion/tls0/estimate"):
                    return

    ready = asyncio.Event()
    sub = asyncio.create_task(subscriber(ready))
    await asyncio.wait_for(ready.wait(), 10)
    event = {"type": "emotion.estimate", "v": 1, "stream_id": "tls0", "seq": 0, "label": "sad"}
    async with MqttPublisher(
        MqttConfig(port=port, tls=MqttTlsConfig(ca_file=str(ca)), reconnect_min_s=0.1)
    ) as pub:
        pub.publish(encode(event))
        await asyncio.wait_for(sub, 15)
        assert pub.connected and pub.last_error is None
    assert any(r.get("label") == "sad" for r in received)

    # A publisher that does not trust the broker's CA never connects and says why.
    other = tmp_path / "other"
    other.mkdir()
    other_ca, _, _ = make_certs(other)
    async with MqttPublisher(
        MqttConfig(port=port, tls=MqttTlsConfig(ca_file=str(other_ca)), reconnect_min_s=0.1)
    ) as bad:
        bad.publish(encode(event))
        for _ in range(100):
            if bad.last_error is not None:
                break
            await asyncio.sleep(0.05)
        assert not bad.connected and bad.last_error is not None
        assert "certificate" in str(bad.last_error).lower()
