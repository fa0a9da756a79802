"""`emotion-monitor bench --parts ingest`: the ramp against a real daemon (token on), real speech, real legs."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamer.bench_ingest import markdown, ramp

REPO = Path(__file__).resolve().parents[2]
SPEECH = sorted((REPO / "tests" / "data" / "emodb").glob("*.wav"))


@pytest.mark.parametrize("protocol", ["twilio", "ingest"])
async def test_a_small_ramp_measures_every_leg_end_to_end(protocol: str) -> None:
    result = await ramp(
        audio=SPEECH, checkpoint=str(REPO / "dropformer" / "pretrained" / "emodb_logmel"),
        device="cpu", threads=1, protocol=protocol, legs_start=2, legs_step=2, legs_max=2,
        step_s=9.0, settle_s=4.0, p99_limit_ms=2000.0, daemon_overrides=[],
    )  # fmt: skip
    (row,) = result["rows"]
    # the /ws subscriber (with the daemon's token) saw estimates of the legs: latency was measured
    assert row["legs"] == 2 and row["estimates"] >= 4 and row["p50_ms"] > 0, row
    assert row["skipped_stale"] == 0 and row["dropped_frames"] == 0 and result["failures"] == []
    assert row["holds"] and result["capacity"] == row
    assert "| 2 |" in markdown(result)
