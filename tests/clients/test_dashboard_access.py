"""A real browser against the access rules (issue 11): a page on another origin and a
DNS-rebinding page cannot read the estimates; the dashboard served by the monitor
can, with the token from its URL when the monitor has one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, async_playwright, expect

from streamer.access import AccessPolicy
from streamer.core.events import Alert
from streamer.publishers.base import encode
from tests.clients.test_dashboard_browser import CHROMIUM_ARGS, DASHBOARD_DIR, chromium_path
from tests.fixtures.publishers import websocket_publisher
from tests.fixtures.services import free_port

TOKEN = "dashboard-token-0123456789"
WAIT_MS = 15_000

ATTACK = """<!doctype html><meta charset="utf-8"><title>cat pictures</title>
<script>
  // What any web page the user opens could try: read the local monitor's estimates.
  window.results = {};
  function attempt(name, url) {
    const ws = new WebSocket(url);
    ws.onmessage = (e) => { window.results[name] = "read: " + e.data.slice(0, 40); ws.close(); };
    ws.onerror = () => { if (!window.results[name]) window.results[name] = "refused"; };
  }
  attempt("cross_origin", "ws://127.0.0.1:MONITOR_PORT/ws");
  attempt("rebound", "ws://rebound.test:MONITOR_PORT/ws");
</script>"""


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    path = chromium_path()
    # rebound.test and attacker.test resolve to this machine: what DNS rebinding achieves
    args = [
        *CHROMIUM_ARGS,
        "--host-resolver-rules=MAP rebound.test 127.0.0.1, MAP attacker.test 127.0.0.1",
    ]
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=path, args=args)
        try:
            yield b
        finally:
            await b.close()


async def test_other_pages_cannot_read_the_estimates(browser: Browser, tmp_path: Path) -> None:
    monitor_port = free_port()
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text(ATTACK.replace("MONITOR_PORT", str(monitor_port)))
    attacker = websocket_publisher(static_dir=site, access=AccessPolicy(allowed_hosts=("*",)))
    monitor = websocket_publisher(port=monitor_port, static_dir=DASHBOARD_DIR)
    async with monitor, attacker:
        monitor.publish(
            encode(Alert("mic0", "sustained_anger", "warning", "angry 0.94", 1000).to_dict())
        )
        page = await browser.new_page()
        await page.goto(f"http://attacker.test:{attacker.port}/")
        await page.wait_for_function("Object.keys(window.results).length == 2", timeout=WAIT_MS)
        assert await page.evaluate("window.results") == {
            "cross_origin": "refused",
            "rebound": "refused",
        }
        # the rebound name cannot even load a page from the monitor
        response = await page.goto(f"http://rebound.test:{monitor_port}/")
        assert response is not None and response.status == 403
        # the monitor's own dashboard connects
        await page.goto(f"http://127.0.0.1:{monitor_port}/")
        await expect(page.locator("#conn-text")).to_have_text("connected", timeout=WAIT_MS)
    assert (
        monitor.refused[403] >= 3 and monitor.connections_total == 1
    )  # (the page, its favicon, 2 sockets)


async def test_the_dashboard_passes_the_token_from_its_url(browser: Browser) -> None:
    async with websocket_publisher(
        static_dir=DASHBOARD_DIR, access=AccessPolicy(token=TOKEN)
    ) as monitor:
        page = await browser.new_page()
        await page.goto(f"http://127.0.0.1:{monitor.port}/")
        await expect(page.locator("#conn-text")).to_contain_text(
            "this monitor needs a token", timeout=WAIT_MS
        )
        await page.goto(f"http://127.0.0.1:{monitor.port}/?token={TOKEN}")
        await expect(page.locator("#conn-text")).to_have_text("connected", timeout=WAIT_MS)
    assert monitor.refused.get(401, 0) >= 1 and monitor.connections_total == 1
