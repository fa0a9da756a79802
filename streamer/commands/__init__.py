"""Subcommands of the live system."""
