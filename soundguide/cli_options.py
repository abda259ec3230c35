"""Click options and helpers shared by every ``soundguide`` command module.

``soundguide.cli`` and ``soundguide.evaluation.cli`` both import these; kept
apart so that neither imports the other for them.
"""

from __future__ import annotations

import os
import sys
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
        help="Allocator policy on glibc. reuse: after loading, every block comes from the heap "
        "and each step reuses the last one's (fastest); adaptive: glibc's default; frugal: "
        "large tensors never linger in the heap (least memory, slowest).",
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
        help="Register a plugin module by import path (repeatable), like pytest's -p.",
    )(func)


def _registries(ctx: click.Context):
    from soundguide.core.plugins import load_registries

    obj = ctx.find_root().ensure_object(dict)
    if "registries" not in obj:
        plugins = obj.get("plugins", [])
        if plugins and "" not in sys.path and os.getcwd() not in sys.path:
            # as `python -m`, so -p finds a plugin module in the current folder
            sys.path.insert(0, os.getcwd())
        obj["registries"] = load_registries(plugins=plugins)
    return obj["registries"]
