"""WebSocketPublisher with real websockets clients and raw HTTP requests."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from streamer.config import WebSocketConfig
from streamer.hub import Hub
from streamer.publishers.base import encode
from streamer.publishers.websocket import WebSocketPublisher


def server_on_any_port(**kw: Any) -> WebSocketPublisher:
    """A publisher on a free loopback port; config keys and constructor arguments in ``kw``."""
    keys = set(WebSocketConfig.model_fields)
    return WebSocketPublisher(
        WebSocketConfig(port=0, **{k: v for k, v in kw.items() if k in keys}),
        **{k: v for k, v in kw.items() if k not in keys},
    )


def estimate(sid: str, seq: int, pad: int = 0) -> dict[str, Any]:
    e: dict[str, Any] = {
        "type": "emotion.estimate",
        "v": 1,
        "stream_id": sid,
        "seq": seq,
        "label": "happy",
        "confidence": 0.7,
    }
    if pad:
        e["pad"] = "x" * pad
    return e


async def recv_json(ws: ClientConnection, timeout_s: float = 10.0) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout_s))


async def recv_until(ws: ClientConnection, n: int) -> list[dict[str, Any]]:
    return [await recv_json(ws) for _ in range(n)]


async def http_get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    """A raw HTTP/1.1 GET, path sent byte for byte (no client-side normalising)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


async def test_two_clients_receive_the_same_events() -> None:
    async with server_on_any_port() as server:
        async with connect(server.url) as a, connect(server.url) as b:
            for ws in (a, b):
                hello = await recv_json(ws)
                assert hello["type"] == "hello" and hello["v"] == 1
            events = [estimate("mic0", i) for i in range(20)]
            for e in events:
                server.publish(encode(e))
            assert await recv_until(a, 20) == events
            assert await recv_until(b, 20) == events
        assert server.stats.published == 20 and server.stats.dropped == 0


async def test_subscriptions_filter_streams() -> None:
    async with server_on_any_port() as server:
        async with connect(server.url + "?streams=a") as only_a, connect(server.url) as only_b:
            await recv_json(only_a)
            await recv_json(only_b)
            await only_b.send(json.dumps({"type": "subscribe", "streams": ["b"]}))
            assert await recv_json(only_b) == {"type": "subscribed", "v": 1, "streams": ["b"]}
            await only_b.send("{not json")
            assert (await recv_json(only_b))["type"] == "error"
            daemon_alert = {"type": "alert", "v": 1, "message": "model reloaded"}
            for e in (
                estimate("a", 1),
                estimate("b", 2),
                estimate("c", 3),
                daemon_alert,
                estimate("a", 4),
            ):
                server.publish(encode(e))
            got_a = await recv_until(only_a, 3)
            got_b = await recv_until(only_b, 2)
            assert [e.get("seq") for e in got_a] == [1, None, 4]
            assert [e.get("seq") for e in got_b] == [2, None]
            # Nothing else was sent: a got hello + 3; b got hello, ack, error + 2.
            assert sorted(c["sent"] for c in server.clients) == [4, 5]


async def test_hello_reports_known_streams_and_their_last_status() -> None:
    hub = Hub()
    async with server_on_any_port(snapshot=hub.snapshot) as server:
        hub.add(server)
        hub.publish({"type": "stream.status", "v": 1, "stream_id": "mic0", "state": "online"})
        hub.publish({"type": "stream.status", "v": 1, "stream_id": "mic0", "state": "speech"})
        hub.publish(estimate("mic0", 7))
        hub.publish({"type": "stream.status", "v": 1, "stream_id": "call-1/in", "state": "silence"})
        async with connect(server.url) as ws:
            hello = await recv_json(ws)
    assert hello["streams"] == ["mic0", "call-1/in"]
    assert hello["last_status"]["mic0"]["state"] == "speech"
    assert hello["last_status"]["call-1/in"]["state"] == "silence"
    assert hello["last_estimate"]["mic0"]["seq"] == 7


async def test_static_files_health_and_traversal(tmp_path: Path) -> None:
    static = tmp_path / "web"
    (static / "js").mkdir(parents=True)
    (static / "index.html").write_text("<!doctype html><title>monitor</title>")
    (static / "js" / "app.js").write_text("console.log('hi')")
    (tmp_path / "secret.txt").write_text("top secret")
    async with server_on_any_port(static_dir=static) as server:
        server.publish(encode(estimate("mic0", 1)))
        status, headers, body = await http_get(server.port, "/")
        assert status == 200 and body.startswith(b"<!doctype html>")
        assert headers["content-type"] == "text/html; charset=utf-8"
        status, headers, body = await http_get(server.port, "/js/app.js")
        assert status == 200 and headers["content-type"].startswith("text/javascript")
        assert body == b"console.log('hi')"
        for evil in (
            "/../secret.txt",
            "/js/../../secret.txt",
            "/%2e%2e/secret.txt",
            "/..%2fsecret.txt",
            "/nope.html",
        ):
            status, _, body = await http_get(server.port, evil)
            assert status == 404, evil
            assert b"top secret" not in body
        status, headers, body = await http_get(server.port, "/healthz")
        assert status == 200 and headers["content-type"] == "application/json"
        health = json.loads(body)
        assert health["published"] == 1 and health["dropped"] == 0 and health["clients"] == []


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def open_stalled_client(port: int) -> socket.socket:
    """A WebSocket client that completes the handshake and then never reads,
    with a small receive buffer so back-pressure reaches the server soon."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    sock.sendall(
        b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        head += sock.recv(1)  # byte by byte: read the response head and nothing more
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


async def test_a_client_that_never_reads_stays_bounded() -> None:
    n_events, batch = 20_000, 100
    async with server_on_any_port(max_queue=100, slow_client_timeout_s=3600) as server:
        slow = await asyncio.to_thread(open_stalled_client, server.port)
        async with connect(server.url) as fast:
            await recv_json(fast)
            received: list[int] = []
            caught_up = asyncio.Event()
            target = -1

            async def read_fast() -> None:
                async for raw in fast:
                    received.append(json.loads(raw)["seq"])
                    if received[-1] >= target:
                        caught_up.set()

            reader = asyncio.create_task(read_fast())
            rss_start = 0
            for start in range(0, n_events, batch):
                if start == 5_000:
                    rss_start = rss_bytes()  # after warm-up: buffers and queues are full
                caught_up.clear()
                target = start + batch - 1
                for seq in range(start, start + batch):
                    server.publish(encode(estimate("mic0", seq, pad=1000)))
                await asyncio.wait_for(caught_up.wait(), 30)
            growth = rss_bytes() - rss_start
            reader.cancel()
            with pytest.raises(asyncio.CancelledError):
                await reader
            slow_info = next(c for c in server.clients if c["sent"] < n_events)
            assert slow_info["queued"] <= 100
            assert slow_info["dropped"] > n_events // 2  # most were dropped, and counted
            assert server.stats.dropped == slow_info["dropped"]
            assert server.health()["clients"][0]["queued"] <= 100
        slow.close()
    assert received == list(range(n_events))  # the fast client got everything
    assert growth < 8 * 1024 * 1024, f"RSS grew by {growth / 1e6:.1f} MB"


def read_until_closed(sock: socket.socket) -> bytes:
    """Read what the server sent until it closes the TCP connection."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


async def test_a_client_that_stays_full_is_closed() -> None:
    async with server_on_any_port(
        max_queue=50, slow_client_timeout_s=0.2, close_timeout_s=0.5
    ) as server:
        slow = await asyncio.to_thread(open_stalled_client, server.port)
        seq = 0
        for _ in range(3000):  # at most ~30 s of publishing
            for _ in range(40):
                server.publish(encode(estimate("mic0", seq, pad=1000)))
                seq += 1
            if server.slow_clients_closed:
                break
            await asyncio.sleep(0.01)
        assert server.slow_clients_closed == 1
        # The server hangs up on the stalled client (socket.timeout = failure).
        await asyncio.to_thread(read_until_closed, slow)
        slow.close()
        for _ in range(1000):
            if not server.clients:
                break
            await asyncio.sleep(0.01)
        assert server.clients == []
        async with connect(server.url) as ws:  # the server still serves others
            await recv_json(ws)
            server.publish(encode(estimate("mic0", -1)))
            assert (await recv_json(ws))["seq"] == -1
