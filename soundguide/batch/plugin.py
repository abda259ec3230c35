"""Built-in plugin: the ``batch`` command.

Registered like any third-party plugin, as a :class:`LazyCommand`:
``soundguide --help`` lists it without importing :mod:`soundguide.batch.cli`.
"""

from __future__ import annotations

import soundguide
from soundguide.cli_options import LazyCommand

BATCH_HELP = "Run many edits from a manifest (CSV/JSONL), on one process or under torchrun."


@soundguide.hookimpl
def register_commands(cli):
    cli.add_command(LazyCommand("batch", "soundguide.batch.cli:batch", short_help=BATCH_HELP))
