"""Built-in plugin: the ``app`` command.

Registered like any third-party plugin, as a :class:`LazyCommand`:
``soundguide --help`` lists it without importing gradio or :mod:`soundguide.app.cli`.
"""

from __future__ import annotations

import soundguide
from soundguide.cli_options import LazyCommand

APP_HELP = "Serve the web app: sources, weights and the run in a browser page."


@soundguide.hookimpl
def register_commands(cli):
    cli.add_command(LazyCommand("app", "soundguide.app.cli:app", short_help=APP_HELP))
