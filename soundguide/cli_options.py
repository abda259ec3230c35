"""Click options and helpers shared by every ``soundguide`` command module.

``soundguide.cli`` and ``soundguide.evaluation.cli`` both import these; kept
apart so that neither imports the other for them.

``-p MODULE`` (see :func:`soundguide.core.plugins.import_plugin_module`): an
installed module of that name first, else ``./MODULE.py`` or the package
``./MODULE/`` loaded from its path. The current folder is never put on
``sys.path``, so a ``soundfile.py`` lying there cannot shadow the real package.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import click


def _add_plugins(ctx: click.Context, _param: click.Parameter, value: Sequence[str]) -> None:
    ctx.ensure_object(dict).setdefault("plugins", []).extend(value)
    root = ctx.find_root()
    if root is not ctx:
        root.ensure_object(dict).setdefault("plugins", []).extend(value)


def malloc_option(func):
    return click.option(
        "--malloc",
        type=click.Choice(["reuse", "adaptive", "frugal"]),
        default="reuse",
        show_default=True,
        help="glibc allocator policy for this command's process (see soundguide/cli_malloc.py). "
        "reuse: every block from the heap, each step reuses the last one's (fastest); "
        "adaptive: glibc's default; frugal: large tensors never linger in the heap "
        "(least memory, slowest).",
    )(func)


def plugin_option(func):
    return click.option(
        "-p",
        "--plugin",
        "plugins",
        multiple=True,
        metavar="MODULE",
        expose_value=False,
        callback=_add_plugins,
        help="Register a plugin module by import path (repeatable), like pytest's -p; "
        "a name nothing installed has is loaded from ./MODULE.py or the package ./MODULE/.",
    )(func)


def _registries(ctx: click.Context):
    from soundguide.core.plugins import load_registries

    obj = ctx.find_root().ensure_object(dict)
    if "registries" not in obj:
        # -p NAME falls back to ./NAME.py or ./NAME/, loaded by path: the current
        # folder never goes on sys.path, where its files would shadow installed ones
        obj["registries"] = load_registries(plugins=obj.get("plugins", []), folder=os.getcwd())
    return obj["registries"]
