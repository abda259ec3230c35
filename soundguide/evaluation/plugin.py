"""Built-in plugin: the ``zeroshot`` and ``probe`` commands.

Registered like any third-party plugin. The commands are :class:`LazyCommand`
entries, so ``soundguide --help`` lists them without importing the evaluation
code (scikit-learn included); :mod:`soundguide.evaluation.cli` is imported
when one of them runs.
"""

from __future__ import annotations

import soundguide
from soundguide.cli_options import LazyCommand

ZEROSHOT_HELP = "Zero-shot audio classification on ESC-50 or UrbanSound8K."
PROBE_HELP = "Linear probe of audio embeddings on ESC-50 or UrbanSound8K."


@soundguide.hookimpl
def register_commands(cli):
    cli.add_command(
        LazyCommand("zeroshot", "soundguide.evaluation.cli:zeroshot", short_help=ZEROSHOT_HELP)
    )
    cli.add_command(LazyCommand("probe", "soundguide.evaluation.cli:probe", short_help=PROBE_HELP))
