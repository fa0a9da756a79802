"""The dashboard shows where the emotion was heard, in the real headless Chromium,
against a real daemon (the bundled EmoDB log-mel model on real speech, paced live).

Checks what a user would: the card draws the latest window's importance heat,
waveform and dropped tokens for exactly the estimate the daemon published
(read from the canvas's data attributes and its pixels), the transitions list
fills as the label changes, and a page that connects late gets both from the
server's hello instead of "none yet".

The screenshot is kept: set ``EMOTION_MONITOR_ARTIFACTS`` to a folder to keep it
there (``EMOTION_MONITOR_ARTIFACTS=docs/img`` refreshes the README's picture),
else it goes to the test's temporary folder.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright, expect

from dropformer.configio import validate
from streamer.config import DaemonConfig
from streamer.core.importance import parse_dropped_hex
from streamer.daemon import Daemon
from tests.clients.test_dashboard_browser import CHROMIUM_ARGS, chromium_path
from tests.fixtures.network import Tap, eventually

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data" / "emodb"
MODEL = REPO / "dropformer" / "pretrained" / "emodb_logmel"
WAIT_MS = 30_000
# angry, angry, sad, sad (one speaker each pair), with short pauses: the label changes
UTTERANCES = ("03a01Wa.wav", "10a04Wb.wav", "03a02Ta.wav", "16a02Tc.wav")


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    path = chromium_path()
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            await b.close()


def speech_file(folder: Path) -> Path:
    pause = np.zeros(int(0.6 * 16000), np.float32)
    parts = []
    for name in UTTERANCES:
        parts += [sf.read(DATA / name, dtype="float32")[0], pause]
    path = folder / "angry-then-sad.wav"
    sf.write(path, np.concatenate(parts), 16000)
    return path


def artifact_dir(tmp_path: Path) -> Path:
    """Where the screenshot is kept: $EMOTION_MONITOR_ARTIFACTS, else the test's temporary folder."""
    folder = Path(os.environ.get("EMOTION_MONITOR_ARTIFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


async def drawn(page: Page, sid: str) -> dict[str, Any]:
    """What the card's importance canvas says it drew (one read, so it is consistent)."""
    return await page.locator(
        f'article.card[data-stream="{sid}"] canvas[data-role="importance"]'
    ).evaluate(
        "c => ({...c.dataset, width: c.width, height: c.height, dpr: window.devicePixelRatio})"
    )


async def strip_pixels(page: Page, sid: str, cells: list[int], n_cells: int) -> list[list[int]]:
    """RGBA of the plain heat strip (bottom of the canvas) at the centre of the given cells."""
    return await page.locator(
        f'article.card[data-stream="{sid}"] canvas[data-role="importance"]'
    ).evaluate(
        """(c, [cells, n]) => {
            const g = c.getContext("2d"), dpr = window.devicePixelRatio || 1;
            const y = c.height - Math.round(7 * dpr);
            return cells.map(i => Array.from(g.getImageData(Math.round((i + 0.5) * c.width / n), y, 1, 1).data));
        }""",
        [cells, n_cells],
    )


async def test_importance_strip_and_transitions_live_and_late(
    browser: Browser, tmp_path: Path
) -> None:
    cfg = validate(DaemonConfig, {
        "model": {"checkpoint": str(MODEL)},
        "windowing": {"window_s": 3.0, "hop_s": 0.5, "first_window": "early"},
        "smoothing": {"time_constant_s": 1.0, "min_dwell_s": 0.5},
        "streams": [{"id": "living_room", "source": {"path": str(speech_file(tmp_path)), "realtime": True}}],
        "publish": {"websocket": {"port": 0}},
        "ingest": {"enabled": False},
        "status_interval_s": 1.0,  # counters on the card stay current
    })  # fmt: skip
    errors: list[str] = []

    def on_console(msg: ConsoleMessage) -> None:
        if msg.type == "error":
            errors.append(msg.text)

    async with Daemon(cfg) as daemon:
        tap = Tap(daemon)
        page = await browser.new_page(viewport={"width": 760, "height": 1180}, color_scheme="dark")
        page.on("console", on_console)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        url = f"http://127.0.0.1:{daemon.websocket.port}/"
        await page.goto(url)
        await expect(page.locator("#conn-text")).to_have_text("connected", timeout=WAIT_MS)
        await eventually(lambda: daemon.websocket.clients, "the page to connect")
        runner = asyncio.create_task(daemon.run())

        card = page.locator('article.card[data-stream="living_room"]')
        canvas = card.locator('canvas[data-role="importance"]')
        await expect(canvas).to_have_attribute("data-seq", re.compile(r"^\d+$"), timeout=WAIT_MS)
        # Once the label has changed (a transition after the first) and a few full windows
        # went by, check the latest window drawn.
        await eventually(
            lambda: (
                len(tap.of("emotion.transition", "living_room")) >= 2
                and any(e["audio_end_ms"] >= 7000 for e in tap.estimates("living_room"))
            ),
            "a label change and 7 s of audio",
            60,
        )
        await page.wait_for_timeout(300)
        shown = await drawn(page, "living_room")
        est = next(e for e in tap.estimates("living_room") if e["seq"] == int(shown["seq"]))
        imp = est["importance"]
        values = imp["values"]
        assert int(shown["cells"]) == sum(v is not None for v in values) > 0
        assert int(shown["nullCells"]) == sum(v is None for v in values)
        assert int(shown["tokens"]) == imp["tokens"] == est["tokens"]["in"]
        mask = parse_dropped_hex(imp["dropped"], imp["tokens"])
        assert (
            int(shown["dropped"])
            == int(mask.sum())
            == est["tokens"]["in"] - est["tokens"]["kept"]
            > 0
        )
        runs = int(np.count_nonzero(np.diff(np.concatenate([[0], mask.astype(np.int8)])) == 1))
        assert int(shown["runs"]) == runs and int(shown["envelopePoints"]) == len(imp["envelope"])
        # The pixels: the most important span is drawn hot (yellow), the least cold (indigo).
        hot, cold = values.index(1.0), values.index(0.0)
        (r_hot, g_hot, b_hot, _), (r_cold, g_cold, b_cold, _) = await strip_pixels(
            page, "living_room", [hot, cold], len(values)
        )
        assert r_hot > 200 and g_hot > 150 and b_hot < 140, (r_hot, g_hot, b_hot)
        assert r_cold < 90 and b_cold > 80, (r_cold, g_cold, b_cold)
        caption = card.locator('[data-role="importance-caption"]')
        await expect(caption).to_contain_text(f"{imp['tokens']} tokens")
        # The transitions list fills as labels change (not "none yet" while a label is shown).
        listed = card.locator('[data-role="transitions"] li.transition')
        await expect(listed).not_to_have_count(0)
        assert await card.locator('[data-role="transitions"] .placeholder').count() == 0
        await card.screenshot(path=str(artifact_dir(tmp_path) / "dashboard-importance.png"))

        await asyncio.wait_for(runner, 60)  # the file ends; the daemon keeps serving until closed
        transitions = tap.of("emotion.transition", "living_room")
        await expect(listed).to_have_count(min(len(transitions), 10), timeout=WAIT_MS)

        # A page that connects now gets the transitions and the latest explained window from the hello.
        late = await browser.new_page(viewport={"width": 760, "height": 1180})
        late.on("pageerror", lambda exc: errors.append(str(exc)))
        await late.goto(url)
        late_card = late.locator('article.card[data-stream="living_room"]')
        await expect(late_card.locator('[data-role="transitions"] li.transition')).to_have_count(
            min(len(transitions), 10), timeout=WAIT_MS
        )
        await expect(
            late_card.locator('[data-role="transitions"] li.transition').first
        ).to_contain_text(transitions[-1]["to"])
        last = [e for e in tap.estimates("living_room") if "importance" in e][-1]
        await expect(late_card.locator('canvas[data-role="importance"]')).to_have_attribute(
            "data-seq", str(last["seq"]), timeout=WAIT_MS
        )
    assert errors == []
