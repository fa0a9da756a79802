"""Shared fixtures: real services (mosquitto, PulseAudio) and tiny models on disk."""

pytest_plugins = ["tests.fixtures.services", "tests.fixtures.models"]
