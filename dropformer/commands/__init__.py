"""Subcommands for training, evaluation and analysis."""
