"""The robot client: subscribe, evaluate the rules, act; or ``--dry-run`` on a JSONL file.

:class:`RobotClient` wires the parts from a :class:`RobotConfig`: the input
(:class:`MqttLink` or :class:`WebSocketLink`) hands events to a bounded queue
(the oldest dropped and counted when the rule loop falls behind), the rule
loop feeds them to the sans-I/O :class:`RuleEngine` and hands each firing to
the rule's outputs, which never block it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

from clients.robot.config import (
    CommandAction,
    LogAction,
    MqttAction,
    RobotConfig,
    RosAction,
    RuleConfig,
    WebhookAction,
)
from clients.robot.links import MqttLink, RosLink, WebSocketLink
from clients.robot.outputs import (
    CommandOutput,
    LogOutput,
    MqttOutput,
    Output,
    RosOutput,
    WebhookOutput,
    action_document,
)
from clients.robot.rules import Firing, RobotRule, RuleEngine
from dropformer.errors import ConfigError
from streamer.publishers.base import DropOldestQueue

log = logging.getLogger(__name__)

#: An inbox item: ("event", event, replayed) or ("outage", None, False).
Item = tuple[str, dict[str, Any] | None, bool]


def make_rules(rules: Iterable[RuleConfig]) -> list[RobotRule]:
    """The engine's rules from the config (seconds become milliseconds of audio)."""
    return [
        RobotRule(
            name=r.name,
            streams=r.streams,
            label=r.label,
            min_confidence=r.min_confidence,
            arousal_min=r.arousal_min,
            arousal_max=r.arousal_max,
            valence_min=r.valence_min,
            valence_max=r.valence_max,
            min_duration_ms=round(r.min_duration_s * 1000),
            cooldown_ms=round(r.cooldown_s * 1000),
            max_gap_ms=round(r.max_gap_s * 1000),
            only_on_change=r.only_on_change,
        )  # fmt: skip
        for r in rules
    ]


class RobotClient:
    """``async with RobotClient(cfg) as robot: await robot.run(stop)``."""

    def __init__(self, cfg: RobotConfig) -> None:
        self.cfg = cfg
        self.engine = RuleEngine(make_rules(cfg.rules))
        self.inbox: DropOldestQueue[Item] = DropOldestQueue(cfg.input.max_queue)
        self.inbox_dropped = 0
        self.mqtt: MqttLink | None = None
        self.websocket: WebSocketLink | None = None
        self.ros: RosLink | None = None
        self.outputs: dict[str, list[Output]] = {}
        self.errors = 0
        self._stack: contextlib.AsyncExitStack | None = None

    # ------------------------------------------------------------- set-up
    def _on_event(self, event: dict[str, Any], replayed: bool) -> None:
        self._put(("event", event, replayed))

    def _on_outage(self) -> None:
        self._put(("outage", None, False))

    def _put(self, item: Item) -> None:
        if self.inbox.put(item):
            self.inbox_dropped += 1
            if self.inbox_dropped in (1, 100) or self.inbox_dropped % 10000 == 0:
                log.warning(
                    "robot: the rule loop fell behind; dropped %d event(s) so far",
                    self.inbox_dropped,
                )

    def _make_output(self, rule: str, action: Any) -> Output:
        if isinstance(action, LogAction):
            return LogOutput(rule, action)
        if isinstance(action, MqttAction):
            assert self.mqtt is not None
            return MqttOutput(rule, action, self.mqtt)
        if isinstance(action, WebhookAction):
            return WebhookOutput(rule, action)
        if isinstance(action, CommandAction):
            return CommandOutput(rule, action)
        if isinstance(action, RosAction):
            assert self.ros is not None
            return RosOutput(rule, action, self.ros)
        raise ConfigError(f"rule {rule}: unknown action kind {getattr(action, 'kind', action)!r}")

    async def __aenter__(self) -> RobotClient:
        cfg, inp = self.cfg, self.cfg.input
        async with contextlib.AsyncExitStack() as stack:
            if inp.kind == "mqtt" or cfg.uses("mqtt"):
                self.mqtt = MqttLink(
                    cfg.mqtt, subscribe=inp.kind == "mqtt", on_event=self._on_event,
                    on_outage=self._on_outage, reconnect_min_s=inp.reconnect_min_s,
                    reconnect_max_s=inp.reconnect_max_s,
                )  # fmt: skip
            if cfg.uses("ros"):
                self.ros = await stack.enter_async_context(RosLink(cfg.ros))
            for rule in cfg.rules:
                self.outputs[rule.name] = [
                    await stack.enter_async_context(self._make_output(rule.name, a))
                    for a in rule.actions
                ]
            if self.mqtt is not None:
                await stack.enter_async_context(self.mqtt)
            if inp.kind == "websocket":
                self.websocket = await stack.enter_async_context(WebSocketLink(
                    inp.url, token=inp.token, on_event=self._on_event, on_outage=self._on_outage,
                    open_timeout_s=inp.open_timeout_s, reconnect_min_s=inp.reconnect_min_s,
                    reconnect_max_s=inp.reconnect_max_s,
                ))  # fmt: skip
            self._stack = stack.pop_all()
        log.info("robot: %d rule(s) on %s", len(cfg.rules),
                 inp.url if inp.kind == "websocket" else f"mqtt://{cfg.mqtt.host}:{cfg.mqtt.port}/{cfg.mqtt.prefix}")  # fmt: skip
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()
        log.info("robot: stopped; %s", json.dumps(self.stats()))

    # ------------------------------------------------------------- running
    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Evaluate events until ``stop`` is set (or forever)."""
        stop = stop or asyncio.Event()
        stopper = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                if not len(self.inbox):
                    waiter = asyncio.create_task(self.inbox.wait())
                    try:
                        await asyncio.wait([waiter, stopper], return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        waiter.cancel()
                    continue
                kind, event, replayed = self.inbox.get_nowait()
                if kind == "outage":
                    self.engine.outage()
                elif event is not None:
                    for firing in self.engine.feed(event, replayed=replayed):
                        self.act(firing)
        finally:
            stopper.cancel()

    def act(self, firing: Firing) -> None:
        """Hand a firing to its rule's outputs (each isolated from the others)."""
        doc = action_document(firing)
        for out in self.outputs.get(firing.rule, []):
            try:
                out.submit(doc)
            except Exception:
                self.errors += 1
                log.exception("robot: output %s failed", out.name)

    def stats(self) -> dict[str, Any]:
        """What happened: events, duplicates, outages, firings per rule, each output's counters."""
        e = self.engine.stats
        doc: dict[str, Any] = {
            "events": e.events, "duplicates": e.duplicates, "malformed": e.malformed,
            "restarts": e.restarts, "outages": e.outages, "fired": dict(e.fired),
            "inbox_dropped": self.inbox_dropped, "output_errors": self.errors,
            "outputs": {o.name: o.stats.as_dict() for outs in self.outputs.values() for o in outs},
        }  # fmt: skip
        if self.mqtt is not None:
            doc["mqtt"] = {"connects": self.mqtt.connects, "published": self.mqtt.published,
                           "dropped": self.mqtt.dropped, "connected": self.mqtt.connected}  # fmt: skip
        if self.websocket is not None:
            doc["websocket"] = {
                "connects": self.websocket.connects,
                "connected": self.websocket.connected,
            }
        return doc


# ------------------------------------------------------------------ dry run
def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Events from a JSONL file (the daemon's JSONL publisher); bad lines are skipped with a warning."""
    try:
        lines = path.open(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"--dry-run {str(path)!r} cannot be read ({exc}); give a JSONL file of events"
        ) from exc
    with lines:
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except ValueError:
                log.warning("%s:%d is not JSON; skipped", path, n)
                continue
            if isinstance(doc, dict):
                yield doc


def dry_run(cfg: RobotConfig, path: Path, out: TextIO) -> dict[str, int]:
    """Print which rule would fire, and when, on a recorded JSONL file; the count per rule."""
    engine = RuleEngine(make_rules(cfg.rules))
    actions = {r.name: ", ".join(a.kind for a in r.actions) for r in cfg.rules}
    for event in read_jsonl(path):
        for f in engine.feed(event):
            out.write(
                f"{f.audio_ms / 1000:8.1f} s  {f.stream_id:<16} {f.rule} -> {actions[f.rule]}  "
                f"({f.label} {f.confidence:.0%}, episode {f.duration_ms / 1000:.1f} s, seq {f.seq})\n"
            )
    summary = ", ".join(f"{name} x{n}" for name, n in engine.stats.fired.items())
    out.write(f"# {engine.stats.events} events; fired: {summary}\n")
    out.flush()
    return dict(engine.stats.fired)
