"""The project's one exception hierarchy (torch-free, importable anywhere).

Every error a user can cause derives from :class:`EmotionMonitorError`; its
message names the field or file at fault and the fix.

Both packages share it (and ``dropformer.configio``, the config loading):
``dropformer`` is the lower layer that ``streamer`` builds on, its package
``__init__`` imports nothing eagerly, and these modules import only the
standard library (configio: YAML and pydantic), so ``streamer.core`` stays
sans-I/O (tests/streamer/core/test_sans_io.py checks what it imports).
"""

from __future__ import annotations


class EmotionMonitorError(Exception):
    """Base class of every error this project raises on purpose."""


class ConfigError(EmotionMonitorError, ValueError):
    """A configuration value is missing, of the wrong type, or out of range."""


class CheckpointError(EmotionMonitorError):
    """A checkpoint file or folder cannot be read or does not match the code."""


class AudioError(EmotionMonitorError):
    """Audio input cannot be decoded, has a bad sample rate or bad samples."""


class DeviceError(EmotionMonitorError):
    """A sound device is missing, busy or cannot be opened."""


class DataError(EmotionMonitorError):
    """A data set is missing, malformed or has unusable entries."""
