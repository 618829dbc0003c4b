"""The `-o/--output text|json` option of commands that run without the API (plan, sim, lab).

The API commands take the same option through `ops.common`; both spell it the same way so that a
test can check every command has it (tests/unit/test_cli_output.py).
"""
from __future__ import annotations

import click

OUTPUT_CHOICES = ("text", "json")

OUTPUT = click.option("--output", "-o", type=click.Choice(OUTPUT_CHOICES), default="text", show_default=True,
                      help="text tables, or JSON for scripts")
