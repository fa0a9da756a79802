"""The live system: sans-I/O core, async adapters, daemon and CLI."""
