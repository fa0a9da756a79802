"""The dashboard in a real headless Chromium against a real WebSocketPublisher.

The server runs in the test's event loop and the browser is driven through
Playwright's async API, so publishing and checking interleave without threads.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright, expect

from streamer.core.events import (
    EmotionEstimate,
    EmotionTransition,
    EmotionUtterance,
    Quality,
    StreamStatus,
)
from streamer.publishers.base import encode
from streamer.publishers.websocket import WebSocketPublisher
from tests.fixtures.publishers import websocket_publisher
from tests.fixtures.services import require_binary

CHROMIUM = "/usr/bin/chromium"
DASHBOARD_DIR = Path(__file__).resolve().parents[2] / "clients" / "dashboard"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
WAIT_MS = 15_000  # generous upper bound for each UI condition (polled, not slept)

FOUR = ("neutral", "happy", "angry", "sad")
# A MELD-like label set plus a label the dashboard has no colour for.
SEVEN = ("neutral", "joy", "surprise", "anger", "sadness", "disgust", "frustration")


def _scores(labels: tuple[str, ...], top: str, p_top: float) -> dict[str, float]:
    rest = (1.0 - p_top) / (len(labels) - 1)
    return {lab: (p_top if lab == top else rest) for lab in labels}


def estimate(
    sid: str,
    seq: int,
    label: str,
    p: float,
    labels: tuple[str, ...] = FOUR,
    *,
    random_init: bool = False,
    arousal: float = 0.5,
    valence: float = -0.4,
) -> dict[str, Any]:
    scores = _scores(labels, label, p)
    return EmotionEstimate(
        stream_id=sid,
        seq=seq,
        audio_start_ms=seq * 500,
        audio_end_ms=seq * 500 + 3000,
        speech=True,
        label=label,
        confidence=p,
        scores=scores,
        raw=scores,
        arousal=arousal,
        valence=valence,
        tokens_in=150,
        tokens_kept=98,
        latency_ms=38.2,
        model={
            "name": "dropformer",
            "frontend": "logmel80",
            "rev": "test",
            "random_init": random_init,
        },
    ).to_dict()


def status(sid: str, state: str, audio_ms: int) -> dict[str, Any]:
    counters = {
        "windows": 12,
        "inferred": 9,
        "skipped_stale": 2,
        "skipped_silence": 1,
        "dropped_frames": 0,
        "bad_samples": 0,
    }
    return StreamStatus(sid, state, audio_ms, counters).to_dict()  # type: ignore[arg-type]


def card(page: Page, sid: str) -> Any:
    return page.locator(f'article.card[data-stream="{sid}"]')


def chromium_path() -> str:
    """The Chromium binary; skip (fail under CI) when it is not installed."""
    return CHROMIUM if Path(CHROMIUM).exists() else require_binary("chromium", "chromium")


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    path = chromium_path()
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            await b.close()


async def test_dashboard_shows_streams_transitions_and_reconnects(
    browser: Browser, tmp_path: Path
) -> None:
    errors: list[str] = []
    page = await browser.new_page(viewport={"width": 1360, "height": 1000})

    def on_console(msg: ConsoleMessage) -> None:
        # Chromium reports each refused reconnection attempt as a console error;
        # those are expected while the server is down. Anything else is a bug.
        if msg.type == "error" and "WebSocket connection to" not in msg.text:
            errors.append(f"console: {msg.text}")

    page.on("console", on_console)
    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))

    pub = websocket_publisher(port=0, static_dir=DASHBOARD_DIR)
    async with pub:
        port = pub.port
        await page.goto(f"http://127.0.0.1:{port}/")
        conn = page.locator("#conn-text")
        await expect(conn).to_have_text("connected", timeout=WAIT_MS)
        await _until(page, lambda: len(pub.clients) == 1)  # the server has registered the page
        await expect(page.locator("#banner-untrained")).to_be_hidden()

        # Two streams; mic1 uses a 7-class model, published first to check ordering.
        pub.publish(encode(status("mic1", "online", 0)))
        pub.publish(encode(status("mic0", "speech", 4000)))
        for seq, p in enumerate((0.5, 0.6, 0.7)):
            pub.publish(encode(estimate("mic0", seq, "neutral", p)))
            if seq == 0:  # the stream's first label comes as a transition from null
                pub.publish(
                    encode(EmotionTransition("mic0", 0, 3000, None, "neutral", 0.5).to_dict())
                )
        for seq, lab in enumerate(("neutral", "neutral", "angry", "angry")):
            pub.publish(encode(estimate("mic0", 3 + seq, lab, 0.72, arousal=0.62, valence=-0.48)))
        pub.publish(encode(EmotionTransition("mic0", 6, 6000, "neutral", "angry", 0.72).to_dict()))
        pub.publish(encode(estimate("mic1", 0, "frustration", 0.55, SEVEN, random_init=True)))

        cards = page.locator("article.card")
        await expect(cards).to_have_count(2, timeout=WAIT_MS)
        assert await cards.evaluate_all("els => els.map(e => e.dataset.stream)") == ["mic0", "mic1"]

        mic0, mic1 = card(page, "mic0"), card(page, "mic1")
        await expect(mic0.locator('[data-role="label"]')).to_have_text("angry", timeout=WAIT_MS)
        await expect(mic0.locator('[data-role="confidence"]')).to_have_text("72%")
        await expect(mic0.locator('[data-role="state"]')).to_have_text("speech")
        await expect(mic0.locator('[data-role="tokens"]')).to_contain_text("98 / 150")
        await expect(mic0.locator('[data-role="skipped_stale"]')).to_have_text("2")
        log0 = mic0.locator('[data-role="transitions"] li')
        await expect(log0).to_have_count(2)
        first = log0.filter(has_text="first label")
        await expect(first).to_have_count(1)
        await expect(first).to_contain_text("neutral")
        await expect(first).not_to_contain_text("null")
        change = log0.filter(has_text="angry")
        await expect(change).to_have_count(1)
        await expect(change).to_contain_text("neutral")
        await expect(mic0.locator(".bar-row")).to_have_count(4)
        await expect(mic0.locator('.bar-row[data-label="angry"] .bar-value')).to_have_text("72%")
        await expect(mic0.locator('[data-role="av"]')).to_contain_text("+0.62")

        # The 7-class stream: bars and legend come from its scores' keys.
        await expect(mic1.locator('[data-role="label"]')).to_have_text("frustration")
        await expect(mic1.locator('[data-role="state"]')).to_have_text("online")
        await expect(mic1.locator(".bar-row")).to_have_count(7)
        await expect(page.locator("#legend")).to_contain_text("frustration")
        await expect(page.locator("#legend li")).to_have_count(len(set(FOUR) | set(SEVEN)))
        # random_init: the warning banner names the stream; mic0 is not marked.
        banner = page.locator("#banner-untrained")
        await expect(banner).to_be_visible()
        await expect(banner).to_contain_text("untrained")
        await expect(banner).to_contain_text("mic1")
        await expect(mic1.locator('[data-role="untrained"]')).to_be_visible()
        await expect(mic0.locator('[data-role="untrained"]')).to_be_hidden()

        await page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)

        # Filter: choose mic1 only -> the page subscribes and hides mic0.
        await page.locator('#filter-chips button[data-stream="mic1"]').click()
        await expect(mic0).to_be_hidden()
        await expect(mic1).to_be_visible()
        await _until(page, lambda: [c["streams"] for c in pub.clients] == [["mic1"]])
        pub.publish(encode(estimate("mic0", 20, "sad", 0.9)))
        pub.publish(encode(estimate("mic1", 1, "joy", 0.8, SEVEN, random_init=True)))
        await expect(mic1.locator('[data-role="label"]')).to_have_text("joy", timeout=WAIT_MS)
        assert await mic0.locator('[data-role="label"]').text_content() == "angry"
        await page.locator('#filter-chips button[data-stream="*"]').click()
        await expect(mic0).to_be_visible()
        await _until(page, lambda: [c["streams"] for c in pub.clients] == [None])

    # Server gone: the page says so and keeps retrying.
    await expect(page.locator("#conn")).to_have_attribute(
        "data-state", "disconnected", timeout=WAIT_MS
    )
    await expect(page.locator("#conn-text")).to_contain_text("reconnecting")

    # Same port, a new server (the daemon restarted): the page reconnects.
    async with websocket_publisher(port=port, static_dir=DASHBOARD_DIR) as pub2:
        await expect(page.locator("#conn-text")).to_have_text("connected", timeout=WAIT_MS)
        await _until(page, lambda: len(pub2.clients) == 1)
        pub2.publish(encode(status("mic0", "speech", 1000)))
        pub2.publish(encode(estimate("mic0", 1, "happy", 0.81, arousal=0.4, valence=0.7)))
        await expect(mic0.locator('[data-role="label"]')).to_have_text("happy", timeout=WAIT_MS)
        await expect(mic0.locator('[data-role="state"]')).to_have_text("speech")
        # mic1 is not on the restarted server: it is marked offline, not left "online".
        await expect(mic1.locator('[data-role="state"]')).to_have_text("offline")

    assert errors == []


async def _until(page: Page, cond: Any, timeout_ms: int = WAIT_MS) -> None:
    """Poll a server-side condition while the browser runs (no fixed sleeps)."""
    waited = 0
    while not cond():
        if waited >= timeout_ms:
            raise AssertionError("condition not met in time")
        await page.wait_for_timeout(50)
        waited += 50


EMODB7 = ("neutral", "happiness", "anger", "sadness", "fear", "disgust", "boredom")
ODD = ("fear", "disgust", "surprise", "boredom", "awe", "calmness", "irony")  # 3 unknown labels
COUNT_MIC_REQUESTS = """
window.__micRequests = 0;
if (navigator.mediaDevices) {
  navigator.mediaDevices.getUserMedia = () => {
    window.__micRequests++;
    return Promise.reject(new Error("test: no microphone"));
  };
}
"""


def utterance(
    sid: str, seq: int, label: str, p: float, labels: tuple[str, ...], quality: Quality
) -> dict[str, Any]:
    return EmotionUtterance(
        sid, seq, seq * 3000, seq * 3000 + 2100, label, p, _scores(labels, label, p), 0.2, -0.1,
        105, 70, 61.0, {"name": "dropformer", "frontend": "logmel80", "rev": "test"},
        truncated=seq == 2, quality=quality,
    ).to_dict()  # fmt: skip


async def test_utterances_quality_flags_label_colours_and_microphone_consent(
    browser: Browser,
) -> None:
    errors: list[str] = []
    page = await browser.new_page(viewport={"width": 1360, "height": 1000})
    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    await page.add_init_script(COUNT_MIC_REQUESTS)
    clean = Quality(-21.0, 0.0, 38.0, 5200.0, False)
    phone = Quality(-24.0, 0.0, 31.0, 3100.0, True)
    noisy = Quality(-15.0, 0.03, 4.0, 7800.0, False)

    async def show(pub: WebSocketPublisher) -> dict[str, str]:
        """Publish the events; return each legend label's colour once all are shown."""
        speech_window = {**estimate("emo", 0, "anger", 0.6, EMODB7), "quality": phone.to_dict()}
        pub.publish(encode(speech_window))
        pub.publish(encode(estimate("odd", 0, "awe", 0.5, ODD)))
        for seq, (label, q) in enumerate([("fear", clean), ("boredom", noisy), ("anger", clean)]):
            pub.publish(encode(utterance("emo", seq, label, 0.55 + seq / 10, EMODB7, q)))
        await expect(page.locator("#legend li")).to_have_count(
            len(set(EMODB7 + ODD)), timeout=WAIT_MS
        )
        return dict(
            await page.locator("#legend .lchip").evaluate_all(
                "els => els.map(e => [e.querySelector('.lname').textContent,"
                " getComputedStyle(e.querySelector('.swatch')).backgroundColor])"
            )
        )

    async with websocket_publisher(port=0, static_dir=DASHBOARD_DIR) as pub:
        await page.goto(f"http://127.0.0.1:{pub.port}/")
        await expect(page.locator("#conn-text")).to_have_text("connected", timeout=WAIT_MS)
        await _until(page, lambda: len(pub.clients) == 1)
        colours = await show(pub)
        # every label of every label set gets a colour of its own
        assert len(set(colours.values())) == len(colours), colours

        emo = card(page, "emo")
        rows = emo.locator('[data-role="utterances"] li.utterance')
        await expect(rows).to_have_count(3, timeout=WAIT_MS)
        await expect(rows.nth(0)).to_contain_text("6.0 s – 8.1 s")  # newest first
        await expect(rows.nth(0)).to_contain_text("anger")
        await expect(rows.nth(0)).to_contain_text("75%")
        await expect(rows.nth(0)).to_contain_text("last part")  # truncated
        await expect(rows.nth(1).locator(".u-warn")).to_contain_text("clipping 3%")
        await expect(rows.nth(1).locator(".u-warn")).to_contain_text("low SNR")
        await expect(rows.nth(0).locator(".u-warn")).to_have_count(0)
        await expect(rows.nth(2)).to_contain_text("fear")
        quality = emo.locator('[data-role="quality"]')
        await expect(quality).to_be_visible()
        await expect(quality).to_have_attribute("data-warn", "telephone band")
        await expect(quality).to_contain_text("SNR 31 dB")
        await expect(card(page, "odd").locator('[data-role="utterances"] li')).to_have_text(
            "none yet"
        )

        # the microphone: nothing is asked of the browser until the page's consent is given
        await page.locator("#mic-button").click()
        consent = page.locator("#mic-consent")
        await expect(consent).to_be_visible()
        await expect(consent).to_contain_text("expressed in the voice")
        await expect(consent).to_contain_text("not what the speaker feels")
        assert await page.evaluate("window.__micRequests") == 0
        await page.locator("#mic-cancel").click()
        await expect(consent).to_be_hidden()
        assert await page.evaluate("window.__micRequests") == 0
        await page.locator("#mic-button").click()
        await page.locator("#mic-accept").click()
        await expect(page.locator("#mic-status")).to_contain_text("test: no microphone")
        assert await page.evaluate("window.__micRequests") == 1

        # the same labels get the same colours after a reload
        await page.reload()
        await expect(page.locator("#conn-text")).to_have_text("connected", timeout=WAIT_MS)
        await _until(page, lambda: len(pub.clients) == 1)
        assert await show(pub) == colours
    assert errors == [], errors
