"""Built-in plugin: the ``batch`` command.

Registered like any third-party plugin, as a :class:`LazyCommand`:
``soundguide --help`` lists it without importing :mod:`soundguide.batch.cli`.
"""

from __future__ import annotations

import soundguide
from soundguide.cli_options import LazyCommand

BATCH_HELP = "Run one edit per manifest row, on one process or many."


@soundguide.hookimpl
def register_commands(cli):
    cli.add_command(LazyCommand("batch", "soundguide.batch.cli:batch", short_help=BATCH_HELP))
