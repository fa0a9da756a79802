"""Alerts in the daemon: rules from the config become an :class:`AlertEvaluator`
(sans-I/O, ``streamer.core.alerts``) and the optional webhook a publisher.

The daemon feeds every smoothed estimate to the evaluator and publishes the
``alert`` events it returns through the hub: WebSocket clients and the
dashboard, MQTT (``<prefix>/<stream>/alert``), JSONL, and the webhook.
"""

from __future__ import annotations

from collections.abc import Sequence

from dropformer.errors import ConfigError
from streamer.config import AlertsConfig, WebhookConfig
from streamer.core.alerts import AlertEvaluator, AlertRule
from streamer.publishers.webhook import WebhookPublisher


def make_evaluator(cfg: AlertsConfig, labels: Sequence[str]) -> AlertEvaluator | None:
    """The evaluator for ``cfg.rules`` (None when there are none).

    Raises ConfigError when a rule names a label the model does not have
    (labels are known only once the model is loaded).
    """
    for i, r in enumerate(cfg.rules):
        if r.label is not None and r.label not in labels:
            raise ConfigError(
                f"alerts.rules.{i}.label = {r.label!r} is not a label of the model "
                f"{list(labels)}; use one of them"
            )
    if not cfg.rules:
        return None
    return AlertEvaluator(
        [
            AlertRule(
                r.name,
                streams=r.streams,
                role=r.role,
                label=r.label,
                min_confidence=r.min_confidence,
                arousal_min=r.arousal_min,
                arousal_max=r.arousal_max,
                valence_min=r.valence_min,
                valence_max=r.valence_max,
                min_duration_ms=round(r.min_duration_s * 1000),
                cooldown_ms=round(r.cooldown_s * 1000),
                max_gap_ms=round(r.max_gap_s * 1000),
                severity=r.severity,
                message=r.message,
            )
            for r in cfg.rules
        ]
    )


def make_webhook(cfg: WebhookConfig) -> WebhookPublisher | None:
    """The webhook publisher (None without a URL)."""
    if cfg.url is None:
        return None
    return WebhookPublisher(
        cfg.url,
        timeout_s=cfg.timeout_s,
        max_retries=cfg.max_retries,
        retry_backoff_s=cfg.retry_backoff_s,
        max_queue=cfg.max_queue,
        token=cfg.bearer_token(),
    )
