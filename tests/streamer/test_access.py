"""Who may listen: the token, the Origin and Host checks, /healthz, connection limits,
against the real WebSocket server with real clients (issue 11)."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.datastructures import Headers
from websockets.exceptions import InvalidStatus

from dropformer.configio import load_config, validate
from dropformer.errors import ConfigError
from streamer.access import AccessPolicy, host_name, request_token
from streamer.config import DaemonConfig
from streamer.publishers.base import encode
from tests.fixtures.publishers import websocket_publisher

TOKEN = "a-good-long-token-0123456789"


async def raw_get(port: int, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    """A raw HTTP/1.1 GET with exactly these headers (a browser's Host, say)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    writer.write(f"GET {path} HTTP/1.1\r\n{head}\r\n".encode())
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    status_line, _, rest = raw.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


async def refused_with(url: str, **kw: Any) -> int:
    """The HTTP status a WebSocket handshake is refused with (fails if it is accepted)."""
    with pytest.raises(InvalidStatus) as refused:
        async with connect(url, **kw):
            pass
    return refused.value.response.status_code


def test_policy_names() -> None:
    p = AccessPolicy(bind_host="0.0.0.0", allowed_hosts=("monitor.example.com", "*.lan"))
    for ok in (
        "127.0.0.1:8765",
        "[::1]:8765",
        "192.168.1.20:8765",
        "localhost:8765",
        "LOCALHOST",
        "monitor.example.com",
        "kitchen.lan:8765",
    ):
        assert p.host_allowed(ok), ok
    for bad in ("evil.example:8765", "127.0.0.1.evil.example", "lan", "", None):
        assert not p.host_allowed(bad), bad
    assert (
        host_name("[::1]:8765") == "::1"
        and host_name("Monitor.Example.COM.:443") == "monitor.example.com"
    )
    assert p.origin_allowed(None, "127.0.0.1:8765")  # not a browser
    assert p.origin_allowed("http://127.0.0.1:8765", "127.0.0.1:8765")  # the page it served
    assert not p.origin_allowed("http://127.0.0.1:9999", "127.0.0.1:8765")
    assert not p.origin_allowed("null", "127.0.0.1:8765")
    assert AccessPolicy(allowed_origins=frozenset({"https://ops.example.com"})).origin_allowed(
        "https://OPS.example.com", "127.0.0.1:8765"
    )
    h = Headers([("Sec-WebSocket-Protocol", "emotion-monitor, bearer.abc")])
    assert request_token("/ws", h) == "abc"
    assert request_token("/ws?token=q%2Bz", Headers()) == "q+z"
    assert request_token("/ws", Headers([("Authorization", "Bearer  xyz ")])) == "xyz"


async def test_other_origins_and_rebound_host_names_are_refused() -> None:
    async with websocket_publisher() as server:
        port = server.port
        # a page on another origin (any web site the user has open) may not read the estimates
        assert await refused_with(server.url, origin="http://evil.example") == 403
        assert await refused_with(server.url, origin="null") == 403
        # DNS rebinding: the attacker's name now points at 127.0.0.1; its page asks with its own Host
        status, body = await raw_get(port, "/ws", {"Host": f"evil.example:{port}", "Upgrade": "websocket",
                                                   "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                                                   "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})  # fmt: skip
        assert status == 403 and b"access.allowed_hosts" in body
        status, _ = await raw_get(port, "/healthz", {"Host": f"evil.example:{port}"})
        assert status == 403
        # the dashboard's own page (same origin) and programs without an Origin get in
        async with connect(server.url, origin=f"http://127.0.0.1:{port}") as ws:
            assert json.loads(await ws.recv())["type"] == "hello"
        async with connect(server.url) as ws:
            assert json.loads(await ws.recv())["type"] == "hello"
        assert server.refused == {403: 4}


async def test_a_token_guards_the_events_and_the_client_addresses() -> None:
    access = AccessPolicy(token=TOKEN)
    async with websocket_publisher(access=access) as server:
        port = server.port
        assert await refused_with(server.url) == 401
        assert await refused_with(server.url + "?token=wrong-token-0123456789") == 401
        assert (
            await refused_with(server.url, additional_headers={"Authorization": "Bearer nope"})
            == 401
        )
        received = []
        for kw in (
            {"additional_headers": {"Authorization": f"Bearer {TOKEN}"}},
            {"subprotocols": ["emotion-monitor", f"bearer.{TOKEN}"]},
        ):  # what a browser can send
            async with connect(server.url, **kw) as ws:
                assert json.loads(await ws.recv())["type"] == "hello"
                assert ws.subprotocol in (None, "emotion-monitor")  # the token is never echoed
                server.publish(encode({"type": "alert", "v": 1, "message": "x"}))
                received.append(json.loads(await ws.recv())["type"])
        async with connect(f"{server.url}?token={TOKEN}") as ws:
            await ws.recv()
            # /healthz counts clients for anyone, but shows their addresses only with the token
            status, body = await raw_get(port, "/healthz", {"Host": f"127.0.0.1:{port}"})
            assert status == 200 and json.loads(body)["clients"][0].keys() == {
                "streams",
                "queued",
                "sent",
                "dropped",
            }
            status, body = await raw_get(
                port, f"/healthz?token={TOKEN}", {"Host": f"127.0.0.1:{port}"}
            )
            assert json.loads(body)["clients"][0]["remote"].startswith("127.0.0.1:")
        assert received == ["alert", "alert"]


async def test_connection_limits() -> None:
    access = AccessPolicy(max_connections=5, max_connections_per_address=3)
    async with websocket_publisher(access=access) as server:
        held = [await connect(server.url) for _ in range(3)]
        assert await refused_with(server.url) == 503  # a fourth from the same address
        for ws in held:
            await ws.close()
        await asyncio.sleep(0.1)
        async with connect(server.url) as ws:  # room again
            assert json.loads(await ws.recv())["type"] == "hello"


def test_a_lan_address_without_a_token_is_refused_or_loud(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EMOTION_MONITOR_TOKEN", raising=False)
    monkeypatch.delenv("EMOTION_MONITOR_INGEST_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="access.allow_insecure"):
        validate(DaemonConfig, load_config(None, ["publish.websocket.host=0.0.0.0"]))
    cfg = validate(
        DaemonConfig,
        load_config(None, ["publish.websocket.host=0.0.0.0", "access.allow_insecure=true"]),
    )
    assert cfg.insecure


async def test_deep_or_large_control_messages_are_refused_before_parsing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with websocket_publisher() as server:
        with caplog.at_level(logging.INFO):
            for payload, code in (
                (
                    "[" * 60_000,
                    1009,
                ),  # the message: refused by size, before json.loads recursed
                (
                    "[" * 60_000 + "]" * 60_000,
                    1009,
                ),  # (beyond any route's frame limit: the library's 1009)
                (
                    '{"type": "subscribe", "streams": ["' + "a" * 5000 + '"]}',
                    1009,
                ),  # over max_control_bytes
                ("[" * 2000 + "]" * 2000, 1008),  # small but deep
                ('{"type": "subscribe", "streams": [[[["a"]]]]}', 1008),
            ):
                async with connect(server.url, max_size=None) as ws:
                    await ws.recv()  # hello
                    await ws.send(payload)
                    await asyncio.wait_for(ws.wait_closed(), 10)
                assert ws.close_code == code
            async with connect(server.url) as ws:  # the server is fine
                await ws.recv()
                await ws.send('{"type": "subscribe", "streams": ["a"]}')
                assert json.loads(await ws.recv())["type"] == "subscribed"
        assert "Traceback" not in caplog.text and "RecursionError" not in caplog.text
        assert server.control_errors == {"too_large": 2, "too_deep": 2}


async def test_allow_insecure_starts_with_a_loud_warning(
    tiny_checkpoint: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from streamer.daemon import Daemon

    monkeypatch.delenv("EMOTION_MONITOR_TOKEN", raising=False)
    monkeypatch.delenv("EMOTION_MONITOR_INGEST_TOKEN", raising=False)
    cfg = validate(DaemonConfig, load_config(None, [
        f"model.checkpoint={tiny_checkpoint}", "streams=[]", "publish.websocket.host=0.0.0.0",
        "publish.websocket.port=0", "access.allow_insecure=true"]))  # fmt: skip
    with caplog.at_level(logging.WARNING):
        async with Daemon(cfg):
            pass
    assert "WITHOUT A TOKEN" in caplog.text
