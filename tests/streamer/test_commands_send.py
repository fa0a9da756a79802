"""`emotion-monitor send` as a user runs it: a real subprocess streaming a real
speech file to a running daemon's /ingest; refused sessions exit 1 with the reason."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.fixtures.network import DATA, daemon_config, running

TOKEN = "edge-device-token-0123456789"


async def run_send(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "streamer.cli", "send", *args,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **(env or {})},
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_send_a_file_to_a_remote_daemon(tmp_path: Path) -> None:
    wav = DATA / "16a02Tc.wav"
    cfg = daemon_config(access={"token": TOKEN}, ingest={"max_speed": 10.0})
    async with running(cfg) as (daemon, tap, url):
        rc, out, err = await run_send(
            str(wav), "--url", f"{url}/ingest", "--stream", "edge1", "--encoding", "mulaw",
            "--no-realtime", "--role", "caller", "--set", "block_ms=50", env={"EMOTION_MONITOR_TOKEN": TOKEN},
        )  # fmt: skip
        assert rc == 0, err
        stopped = json.loads(out.splitlines()[-1])
        assert stopped["type"] == "stopped" and stopped["stream_id"] == "edge1"
        assert out.startswith("stream edge1: 2.2 s sent")
        estimates = tap.estimates("edge1")
        assert len(estimates) == stopped["counters"]["inferred"] >= 2
        assert tap.final_status("edge1")["state"] == "offline"

        # a wrong token: the daemon refuses, the sender says why and exits 1
        rc, out, err = await run_send(
            str(wav), "--url", f"{url}/ingest", "--token", "wrong-token-0123456789"
        )
        assert rc == 1 and "4401" in err and "token" in err
    # nobody listening
    rc, _, err = await run_send(str(wav), "--url", f"{url}/ingest")
    assert rc == 1 and "cannot stream" in err


def test_send_help_lists_its_own_arguments() -> None:
    out = subprocess.run([sys.executable, "-m", "streamer.cli", "send", "--help"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    for flag in (
        "--url",
        "--stream",
        "--encoding",
        "--realtime",
        "--no-realtime",
        "--token",
        "--config",
        "--set",
    ):
        assert flag in out
    bad = subprocess.run([sys.executable, "-m", "streamer.cli", "send", "x.wav", "--set", "encoding=opus"],
                         capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2 and "encoding" in bad.stderr
