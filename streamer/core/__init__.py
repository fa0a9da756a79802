"""Sans-I/O core of the live system: numpy only, time is a sample index.

Windowing, gating, smoothing, affect dimensions, the event schema and the
per-stream state machine, all testable with plain arrays; also the network
audio codecs and protocols (``codecs``, ``ingest``, ``twilio``) and alert
rules (``alerts``).
"""

from streamer.core.affect import PROTOTYPES, arousal_valence, unplaced
from streamer.core.alerts import AlertEvaluator, AlertRule
from streamer.core.events import (
    Alert,
    EmotionEstimate,
    EmotionTransition,
    EmotionUtterance,
    Event,
    Quality,
    StreamStatus,
    parse_event,
    schema_path,
    validate_event,
)
from streamer.core.gate import EnergyGate, Gate, GateDecision
from streamer.core.smoother import Smoother, SmootherUpdate
from streamer.core.stream import StreamCore, WindowRequest
from streamer.core.windower import Window, Windower, expected_window_count

__all__ = [
    "PROTOTYPES",
    "Alert",
    "AlertEvaluator",
    "AlertRule",
    "EmotionEstimate",
    "EmotionTransition",
    "EmotionUtterance",
    "EnergyGate",
    "Event",
    "Gate",
    "GateDecision",
    "Quality",
    "Smoother",
    "SmootherUpdate",
    "StreamCore",
    "StreamStatus",
    "Window",
    "WindowRequest",
    "Windower",
    "arousal_valence",
    "expected_window_count",
    "parse_event",
    "schema_path",
    "unplaced",
    "validate_event",
]
