"""Built-in plugin: the ``curate`` and ``train`` commands.

Registered like any third-party plugin. The commands are :class:`LazyCommand`
entries, so ``soundguide --help`` lists them without importing the training
code; :mod:`soundguide.training.cli` is imported when one of them runs.
"""

from __future__ import annotations

import soundguide
from soundguide.cli_options import LazyCommand

CURATE_HELP = "Precompute a dataset's spectrograms for training."
TRAIN_HELP = "Train the SoundCLIP audio encoder on a curated store."


@soundguide.hookimpl
def register_commands(cli):
    cli.add_command(LazyCommand("curate", "soundguide.training.cli:curate", short_help=CURATE_HELP))
    cli.add_command(LazyCommand("train", "soundguide.training.cli:train", short_help=TRAIN_HELP))
