"""Built-in plugin: the ``video`` command.

Registered like any third-party plugin, as a :class:`LazyCommand`:
``soundguide --help`` lists it without importing :mod:`soundguide.video.cli`
(nor PyAV).
"""

from __future__ import annotations

import soundguide
from soundguide.cli_options import LazyCommand

VIDEO_HELP = "Turn a recording into a video whose picture follows the sound."


@soundguide.hookimpl
def register_commands(cli):
    cli.add_command(LazyCommand("video", "soundguide.video.cli:video", short_help=VIDEO_HELP))
