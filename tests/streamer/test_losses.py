"""Nothing lost without a count (issue 11): a broker outage with a small queue, JSONL
rotation, a full disk; every loss in the stream's status, the log and the summary."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import resource
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from streamer.config import JsonlConfig
from streamer.core.events import Alert, StreamStatus, validate_event
from streamer.publishers.base import encode
from streamer.publishers.jsonl import JsonlSink
from tests.clients.test_robot_rules import Daemon as Events
from tests.fixtures.network import eventually
from tests.fixtures.publishers import mqtt_publisher
from tests.fixtures.services import MosquittoBroker

DATA = Path(__file__).resolve().parents[1] / "data" / "emodb"


def status(sid: str, state: str, audio_ms: int) -> dict[str, Any]:
    return StreamStatus(
        sid,
        state,
        audio_ms,
        {
            "windows": 1,
            "inferred": 1,
            "skipped_stale": 0,  # type: ignore[arg-type]
            "skipped_silence": 0,
            "dropped_frames": 0,
            "bad_samples": 0,
        },
    ).to_dict()


async def test_broker_outage_keeps_state_drops_estimates_first_and_counts_exactly(
    mosquitto_broker: MosquittoBroker,
) -> None:
    """The issue's outage: 168 estimates while the broker is away, max_queue 20."""
    b = mosquitto_broker
    sent: list[dict[str, Any]] = []
    pub = mqtt_publisher(
        b.host,
        b.port,
        username="daemon",
        password=b.users["daemon"],
        max_queue=20,
        reconnect_min_s=1.0,
        reconnect_max_s=1.0,
    )
    async with pub:
        await eventually(lambda: pub.connected, "the publisher to connect")
        b.stop()
        streams = [Events("mic0"), Events("mic1")]
        for i in range(84):  # 168 estimates with their transitions, statuses and 4 alerts
            for s in streams:
                for event in s.step(("neutral", "angry", "sad")[i // 30]) + [
                    status(s.sid, "speech", s.t_ms)
                ]:
                    sent.append(event)
                    pub.publish(encode(event))
            if i % 40 == 0:
                for s in streams:
                    sent.append(Alert(s.sid, "anger", "warning", f"alert {i}", s.t_ms).to_dict())
                    pub.publish(encode(sent[-1]))
        estimates = [e for e in sent if e["type"] == "emotion.estimate"]
        alerts = [e for e in sent if e["type"] == "alert"]
        assert len(estimates) == 168 and len(alerts) == 6
        # 20 queued: every alert and the 14 newest estimates; the other 154 estimates lost, counted
        assert pub.stats.dropped == 154
        assert pub.stats.lost_by_stream == {"mic0": 77, "mic1": 77}
        await asyncio.to_thread(b.start)
        got: list[tuple[str, dict[str, Any], bool]] = []
        async with b.client() as sub:
            await sub.subscribe("emotion/#", qos=1)

            async def collect() -> None:
                async for m in sub.messages:
                    assert isinstance(m.payload, bytes)
                    got.append((str(m.topic), json.loads(m.payload), bool(m.retain)))

            reader = asyncio.create_task(collect())
            await eventually(
                lambda: sum(t.endswith("/estimate") for t, _, _ in got) == 14,
                "the queued estimates",
            )
            await eventually(lambda: pub.stats.published >= 14 + 6 + 4, "everything queued")
            reader.cancel()
    for _, payload, _ in got:
        validate_event(payload)  # retained ones too
    delivered = [(p["stream_id"], p["seq"]) for t, p, _ in got if t.endswith("/estimate")]
    newest = sorted(estimates, key=lambda e: sent.index(e))[-14:]
    assert sorted(delivered) == sorted((e["stream_id"], e["seq"]) for e in newest)
    assert sum(t.endswith("/alert") for t, _, _ in got) == 6
    for s in streams:  # the latest state and status of each stream, never dropped
        last_state = [p for t, p, _ in got if t == f"emotion/{s.sid}/state"][-1]
        assert last_state["to"] == "sad"
        last_status = [p for t, p, _ in got if t == f"emotion/{s.sid}/status"][-1]
        assert last_status["audio_ms"] == s.t_ms
    # the exact account: what was sent + what was lost = every estimate handed to the publisher
    assert len(delivered) + pub.stats.dropped == len(estimates)


def rotated(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.glob(path.name + "*"))


@pytest.mark.parametrize("keep", [2, None])
async def test_jsonl_rotation_keeps_what_it_is_told_and_logs_each_deletion(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, keep: int | None
) -> None:
    path = tmp_path / "events.jsonl"
    sink = JsonlSink(JsonlConfig(path=str(path), rotate_mb=0.01, rotate_keep=keep))
    events = Events("mic0")
    with caplog.at_level(logging.INFO, logger="streamer.publishers.jsonl"):
        async with sink:
            for _ in range(150):  # about 60 kB: six files of 10 kB
                for e in events.step("angry"):
                    sink.publish(encode(e))
                await asyncio.sleep(0)
    n = sink.rotations
    assert n >= 4
    deleted = [r.getMessage() for r in caplog.records if "deleted" in r.getMessage()]
    if keep is None:  # every rotated file is still there: no event is gone
        assert rotated(path) == sorted(
            ["events.jsonl"] + [f"events.jsonl.{i}" for i in range(1, n + 1)]
        )
        assert deleted == [] and sink.deleted == 0
    else:
        assert rotated(path) == ["events.jsonl", "events.jsonl.1", "events.jsonl.2"]
        assert len(deleted) == n - 2 == sink.deleted and "rotate_keep=2" in deleted[0]
    lines = [line for p in path.parent.glob("events.jsonl*") for line in p.read_text().splitlines()]
    assert (
        sink.stats.published == 151 and sink.stats.dropped == 0
    )  # 150 estimates and the first transition
    seqs = [json.loads(line)["seq"] for line in lines]  # every kept line is whole JSON
    assert (len(lines) == 151) if keep is None else (len(lines) < 151 and max(seqs) == 149)


def speech_file(tmp_path: Path) -> Path:
    audio = np.concatenate(
        [sf.read(DATA / n, dtype="float32")[0] for n in ("03a01Wa.wav", "03a01Fa.wav")]
    )
    out = tmp_path / "speech.wav"
    sf.write(out, audio, 16000)
    return out


def run_daemon(
    tmp_path: Path, checkpoint: Path, *sets: str, preexec: Any = None
) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "streamer.cli", "run", "--set", f"model.checkpoint={checkpoint}",
           "--set", f"streams=[{{id: s, source: {{path: {speech_file(tmp_path)}, realtime: false}}}}]",
           "--set", "gate.kind=none", "--set", "publish.websocket.port=0", "--set", "publish.jsonl.enabled=true",
           *[a for s in sets for a in ("--set", s)]]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, preexec_fn=preexec)


def summary(stderr: str) -> dict[str, Any]:
    m = re.search(r"shutdown summary: (\{.*\})", stderr)
    assert m, stderr[-2000:]
    return json.loads(m.group(1))


def test_a_full_disk_is_counted_not_a_traceback(tmp_path: Path, tiny_checkpoint: Path) -> None:
    proc = run_daemon(
        tmp_path, tiny_checkpoint, "publish.jsonl.path=/dev/full"
    )  # every write: ENOSPC
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "write failed" in proc.stderr
    s = summary(proc.stderr)
    jsonl, ws = s["publishers"]["jsonl"], s["publishers"]["websocket"]
    assert (
        jsonl["published"] == 0 and jsonl["dropped"] == ws["published"] > 5
    )  # every event, counted
    assert s["lost"]["lost_jsonl"] == jsonl["dropped"]
    assert s["streams"]["s"]["lost_jsonl"] == jsonl["dropped"]  # all of them the stream's own
    assert "lost so far: lost_jsonl" in proc.stderr  # the running total in the log


def test_a_disk_that_fills_up_mid_run_keeps_whole_lines_and_counts_the_rest(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    limit = (
        1200  # bytes: the file stops growing after a few events (RLIMIT_FSIZE, like a full disk)
    )

    def small_disk() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes beyond the limit fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    path = tmp_path / "events.jsonl"
    proc = run_daemon(tmp_path, tiny_checkpoint, f"publish.jsonl.path={path}", preexec=small_disk)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    s = summary(proc.stderr)
    jsonl, ws = s["publishers"]["jsonl"], s["publishers"]["websocket"]
    lines = path.read_text().splitlines()
    for line in lines:
        validate_event(json.loads(line))  # no half line left behind
    assert path.stat().st_size <= limit and len(lines) == jsonl["published"] > 0
    assert jsonl["dropped"] > 0 and jsonl["published"] + jsonl["dropped"] == ws["published"]
    assert s["streams"]["s"]["lost_jsonl"] == s["lost"]["lost_jsonl"] == jsonl["dropped"]


def test_the_shutdown_summary_counts_what_closing_could_not_deliver(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    # an MQTT broker that is not there: everything the stream published is lost, and counted
    from tests.fixtures.services import free_port

    proc = run_daemon(
        tmp_path,
        tiny_checkpoint,
        "publish.jsonl.enabled=false",
        "publish.mqtt.enabled=true",
        f"publish.mqtt.port={free_port()}",
        "publish.mqtt.max_queue=3",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = summary(proc.stderr)
    mqtt, ws = s["publishers"]["mqtt"], s["publishers"]["websocket"]
    assert mqtt["published"] == 0 and mqtt["dropped"] == s["lost"]["lost_mqtt"] > 0
    # every message of the stream (estimates, transitions, statuses: a status replaced by a newer
    # one is superseded, not lost) plus the daemon's own offline status
    assert mqtt["dropped"] + mqtt["superseded"] == ws["published"] + 1
    assert s["streams"]["s"]["lost_mqtt"] == mqtt["dropped"] - 1
