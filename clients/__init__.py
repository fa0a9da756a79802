"""Clients that subscribe to the monitor's events."""
