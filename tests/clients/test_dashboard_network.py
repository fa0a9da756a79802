"""The dashboard in real headless Chromium against the real daemon: a Twilio call's
caller leg shows up with estimates and an alert, and the "listen to this browser's
microphone" button (consent in the page, getUserMedia, AudioWorklet, /ingest)
streams Chromium's fake capture device, fed from a real EmoDB speech file."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from playwright.async_api import ConsoleMessage, async_playwright, expect

from tests.clients.test_dashboard_browser import CHROMIUM_ARGS, chromium_path
from tests.fixtures.network import (
    CALL_SID,
    DATA,
    at_8k,
    daemon_config,
    running,
    speech,
    twilio_call,
    twilio_messages,
)

WAIT_MS = 20_000
LABELS = re.compile(r"^(neutral|happy|angry|sad)$")


async def test_call_leg_alert_and_browser_microphone_on_the_page(tmp_path: Path) -> None:
    fake_mic = DATA / "16a02Tc.wav"  # 16 kHz 16-bit PCM speech; Chromium loops it
    cfg = daemon_config(
        ingest={"max_speed": 10.0, "twilio": {"enabled": True}},
        alerts={
            "rules": [
                {
                    "name": "caller_speaking",
                    "streams": "*.caller",
                    "min_confidence": 0.01,
                    "min_duration_s": 1.0,
                    "severity": "warning",
                }
            ]
        },  # fmt: skip
    )
    async with running(cfg) as (daemon, tap, url), async_playwright() as p:
        browser = await p.chromium.launch(executable_path=chromium_path(), args=[
            *CHROMIUM_ARGS, "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={fake_mic}", "--autoplay-policy=no-user-gesture-required",
        ])  # fmt: skip
        try:
            page = await browser.new_page(viewport={"width": 1360, "height": 1000})
            errors: list[str] = []

            def on_console(msg: ConsoleMessage) -> None:
                if msg.type == "error":
                    errors.append(msg.text)

            page.on("console", on_console)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(url.replace("ws://", "http://") + "/")
            await expect(page.locator("#conn-text")).to_have_text("connected", timeout=WAIT_MS)

            # a phone call: the caller leg appears with estimates and exactly one alert
            caller = at_8k(speech("03a01Wa.wav", "03a01Fa.wav", "03a01Wa.wav"))
            code, _ = await twilio_call(
                url, twilio_messages({"inbound": caller, "outbound": caller}), speed=4
            )
            assert code == 1000
            leg = page.locator(f'article.card[data-stream="{CALL_SID}.caller"]')
            await expect(leg.locator('[data-role="label"]')).to_have_text(LABELS, timeout=WAIT_MS)
            await expect(leg.locator('[data-role="alerts"] li')).to_have_count(1, timeout=WAIT_MS)
            await expect(leg.locator('[data-role="alerts"] li')).to_contain_text("caller_speaking")
            await expect(leg.locator('[data-role="state"]')).to_have_text(
                "offline", timeout=WAIT_MS
            )
            assert len(tap.of("alert", f"{CALL_SID}.caller")) == 1
            # the whole call (gate off: one utterance) in the utterance list, flagged as
            # telephone band: the caller's audio came at 8 kHz
            heard = leg.locator('[data-role="utterances"] li.utterance')
            await expect(heard).to_have_count(1, timeout=WAIT_MS)
            await expect(heard.locator(".u-warn")).to_contain_text("telephone band")
            (utt,) = tap.of("emotion.utterance", f"{CALL_SID}.caller")
            assert utt["quality"]["telephone_band"] is True and utt["label"] in LABELS.pattern
            await expect(
                page.locator(f'article.card[data-stream="{CALL_SID}.agent"]')
            ).to_have_count(0)

            # the browser's microphone: consent first, then its own stream
            await page.locator("#mic-button").click()
            consent = page.locator("#mic-consent")
            await expect(consent).to_be_visible()
            await expect(consent).to_contain_text("Nothing is recorded")
            stream_id = (await page.locator("#mic-consent-stream").text_content()) or ""
            assert re.fullmatch(r"browser-[a-z0-9]+", stream_id)
            assert not tap.of("stream.status", stream_id)  # nothing is sent before consent
            await page.locator("#mic-accept").click()
            await expect(page.locator("#mic-status")).to_contain_text("listening", timeout=WAIT_MS)
            mine = page.locator(f'article.card[data-stream="{stream_id}"]')
            await expect(mine.locator('[data-role="label"]')).to_have_text(LABELS, timeout=WAIT_MS)
            await expect(mine.locator('[data-role="tokens"]')).to_contain_text("/", timeout=WAIT_MS)
            await expect(mine.locator('[data-role="state"]')).to_have_text(
                re.compile("speech|silence")
            )
            await page.screenshot(path=str(tmp_path / "dashboard-network.png"), full_page=True)
            await page.locator("#mic-button").click()  # stop
            await expect(mine.locator('[data-role="state"]')).to_have_text(
                "offline", timeout=WAIT_MS
            )
            await expect(page.locator("#mic-status")).to_have_text("stopped")
            est = tap.estimates(stream_id)
            assert len(est) >= 2 and all(e["model"]["random_init"] is False for e in est)
            assert tap.final_status(stream_id)["counters"]["dropped_frames"] == 0
            await asyncio.sleep(0.2)
            assert errors == []
        finally:
            await browser.close()
    assert daemon.cores == {}
