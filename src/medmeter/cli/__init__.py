"""The `medmeter` command line: one module per command group, attached in `root`."""

from medmeter.cli.root import cli, main

__all__ = ["cli", "main"]
