"""Click options and helpers shared by every ``soundguide`` command module.

``soundguide.cli`` and the command modules of plugins (training, evaluation,
third parties) import these; kept apart so that none imports another for them.

``-p MODULE`` (see :func:`soundguide.core.plugins.import_plugin_module`): an
installed module of that name first, else ``./MODULE.py`` or the package
``./MODULE/`` loaded from its path. The current folder is never put on
``sys.path``, so a ``soundfile.py`` lying there cannot shadow the real package.

Plugins can add commands, so the ``soundguide`` command must know its plugins
before it looks a command up. Like pytest, it reads ``-p MODULE``,
``-pMODULE``, ``--plugin MODULE`` and ``--plugin=MODULE`` from the whole
command line first (:func:`scan_plugin_args`, up to a ``--``): ``-p`` may stand
before or after the command name, and ``soundguide -p pkg.cmds mycommand`` and
``soundguide mycommand -p pkg.cmds`` both find ``mycommand`` (a plugin's
command gets the ``-p`` option unless it has a ``-p`` of its own). As with
pytest, a word ``-p`` is always read as the plugin flag: a plugin command with
an option ``-p`` of its own takes its value as a plugin module too, so such a
command should offer a long name (``--port``) to its users.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from typing import Any

import click

PLUGIN_FLAGS = ("-p", "--plugin")


def scan_plugin_args(args: Sequence[str]) -> list[str]:
    """The ``-p``/``--plugin`` modules anywhere in ``args`` (before a ``--``), in order."""
    found: list[str] = []
    words = list(args)
    i = 0
    while i < len(words):
        word = words[i]
        if word == "--":
            break
        if word in PLUGIN_FLAGS:
            if i + 1 < len(words):
                found.append(words[i + 1])
            i += 2
            continue
        if word.startswith("--plugin="):
            found.append(word.partition("=")[2])
        elif word.startswith("-p") and not word.startswith("--") and len(word) > 2:
            found.append(word[2:])
        i += 1
    return [name for name in found if name]


def _add_plugins(ctx: click.Context, _param: click.Parameter, value: Sequence[str]) -> None:
    obj = ctx.find_root().ensure_object(dict)
    plugins = obj.setdefault("plugins", [])
    for name in value:
        if name in plugins:
            continue  # found by the scan of the command line already
        if "registries" in obj:
            raise click.UsageError(
                f"-p {name} was read after the plugins were loaded; give it as '-p {name}' "
                "(not combined with other short options)"
            )
        plugins.append(name)


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


def device_option(func):
    """``--device auto|cpu|cuda|cuda:N|mps`` (auto: CUDA, then MPS, then the CPU)."""
    return click.option(
        "--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps."
    )(func)


def trust_checkpoint_option(func):
    """``--trust-checkpoint``: without it no checkpoint may run code while it loads."""
    return click.option(
        "--trust-checkpoint",
        is_flag=True,
        help="Allow checkpoints that unpickle arbitrary Python objects (only for files you trust).",
    )(func)


_PLUGIN_ATTRS: dict[str, Any] = {
    "multiple": True,
    "metavar": "MODULE",
    "expose_value": False,
    "callback": _add_plugins,
    "help": "Register a plugin module by import path (repeatable), like pytest's -p; "
    "a name nothing installed has is loaded from ./MODULE.py or the package ./MODULE/.",
}


def plugin_option(func):
    """``-p/--plugin MODULE`` on a command (the root group adds it to plugin commands too)."""
    return click.option("-p", "--plugin", "plugins", **_PLUGIN_ATTRS)(func)


def accept_plugin_option(command: click.Command) -> None:
    """Give ``command`` the ``-p`` option unless it has a ``-p`` or ``--plugin`` of its own."""
    taken = {opt for param in command.params for opt in getattr(param, "opts", ())}
    if not taken & set(PLUGIN_FLAGS):
        command.params.append(click.Option(["-p", "--plugin", "plugins"], **_PLUGIN_ATTRS))


HOST = ("soundguide.cli", "soundguide (built-in)")
"""Owner of the ``soundguide`` command's own subcommands, in duplicate-name messages."""


def _registries(ctx: click.Context):
    """What the plugins registered, loaded once per command line (with its ``-p`` modules)."""
    from soundguide.core.plugins import load_registries
    from soundguide.core.registry import Registries

    root = ctx.find_root()
    obj = root.ensure_object(dict)
    if "registries" not in obj:
        base = Registries()
        if isinstance(root.command, click.Group):
            base.commands.reserve(root.command.commands, HOST)
        # -p NAME falls back to ./NAME.py or ./NAME/, loaded by path: the current
        # folder never goes on sys.path, where its files would shadow installed ones
        obj["registries"] = load_registries(
            plugins=obj.get("plugins", []), folder=os.getcwd(), registries=base
        )
    return obj["registries"]


class LazyCommand(click.Command):
    """A command known by its name and short help; its code is imported when it is used.

    ``target`` (``"package.module:attribute"``) names the real
    ``click.Command``. ``soundguide --help`` lists a lazy command without
    importing it; running it, or its own ``--help``, imports ``target`` and
    hands over to it. For plugins whose command module is costly to import::

        @soundguide.hookimpl
        def register_commands(cli):
            cli.add_command(LazyCommand("train", "pkg.cli:train", short_help="Train it."))
    """

    def __init__(self, name: str, target: str, *, short_help: str) -> None:
        super().__init__(name, short_help=short_help, help=short_help)
        self.target = target
        self._loaded: click.Command | None = None

    def load(self) -> click.Command:
        """The real command (imported once)."""
        if self._loaded is None:
            from soundguide.core.errors import PluginError

            module, _, attribute = self.target.partition(":")
            command = getattr(importlib.import_module(module), attribute, None)
            if not isinstance(command, click.Command):
                raise PluginError(f"command {self.name!r}: {self.target} is not a click command")
            self._loaded = command
        return self._loaded

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        return self.load().make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx: click.Context) -> Any:
        return ctx.command.invoke(ctx) if ctx.command is not self else super().invoke(ctx)
