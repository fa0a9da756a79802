"""The README's run command, as a new user sees it: `emotion-monitor run` with no
config replays the bundled sample audio through the bundled model and the
dashboard in a real browser shows live estimates."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

from tests.clients.test_dashboard_browser import CHROMIUM_ARGS, chromium_path
from tests.fixtures.services import free_port, wait_for_port


def test_default_run_shows_estimates_in_the_dashboard(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamer.cli",
            "run",
            "--set",
            f"publish.websocket.port={port}",
            "--duration-s",
            "60",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        wait_for_port("127.0.0.1", port, 60.0)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"http://127.0.0.1:{port}/")
            card = page.locator('article.card[data-stream="demo"]')
            expect(card).to_be_visible(timeout=20_000)
            label = card.locator('[data-role="label"]')
            expect(label).to_have_text(
                re.compile(r"neutral|happy|angry|sad", re.IGNORECASE), timeout=20_000
            )
            expect(card.locator('[data-role="tokens"]')).to_contain_text("/", timeout=5_000)
            expect(
                card.locator('[data-role="untrained"]')
            ).to_be_hidden()  # the bundled model is trained
            time.sleep(2)
            page.screenshot(path=str(tmp_path / "default-run.png"))
            browser.close()
        assert not errors
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "RANDOMLY INITIALISED" not in out
    assert "dashboard and events: http://127.0.0.1" in out
