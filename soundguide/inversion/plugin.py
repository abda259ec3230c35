"""Built-in plugin: the ``invert`` command.

Registered like any third-party plugin, as a :class:`LazyCommand`:
``soundguide --help`` lists it without importing :mod:`soundguide.inversion.cli`.
"""

from __future__ import annotations

import soundguide
from soundguide.cli_options import LazyCommand

INVERT_HELP = "Invert photos into latents of a generator."


@soundguide.hookimpl
def register_commands(cli):
    cli.add_command(
        LazyCommand("invert", "soundguide.inversion.cli:invert", short_help=INVERT_HELP)
    )
