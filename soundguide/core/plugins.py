"""The plugin manager: built-in plugin modules, entry points and ``-p`` modules.

Plugins are registered in a fixed order: the built-ins, then the entry points
of installed distributions (``SOUNDGUIDE_DISABLE_PLUGIN_AUTOLOAD=1`` turns
these off), then the modules named with ``-p`` (``plugins=`` here).

Loading is guarded, and what happens depends on who asked for the plugin:

- A built-in or entry-point plugin that fails to import, or whose register
  hook raises, is reported with one :class:`PluginLoadWarning` line naming it
  and skipped; the rest keep working. ``SystemExit`` and any other
  ``BaseException`` count as failures; only ``KeyboardInterrupt`` passes
  through, so Ctrl-C still stops the program.
- A ``-p`` module was asked for by name, so the same failures are a one-line
  :class:`PluginError` instead.

A plugin's registrations are all or nothing. Its register hooks add into
registrars of its own (empty, so a hook sees only what its plugin added);
only when every hook has returned are they merged into the shared
registries. A plugin that raises halfway leaves nothing behind, and one that
registers a name an earlier plugin already has (built-ins come first) is
skipped entirely, with one warning naming the kind, the name and both plugins
(module and distribution) -- or, for a ``-p`` module, a
:class:`DuplicatePluginError` -- so the other plugins, ``soundguide plugins``
and every command keep working. Commands count like any other name: one that
the ``soundguide`` command itself has (``edit``...) or a plugin registered
before (``train``...) makes the plugin that registers it again skipped.

``-p NAME`` imports ``NAME`` as an installed module first. If nothing
importable has that name and a ``folder`` is given (the CLI gives the current
folder), ``folder/NAME.py`` or the package ``folder/NAME/`` is loaded from its
path. ``sys.path`` is never changed, so a ``soundfile.py`` or ``numpy.py``
lying in the current folder never shadows the installed package for any other
import; the price is that a ``-p`` file cannot import sibling files by their
plain name (make it a package folder and import them relatively).
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.metadata
import importlib.util
import os
import sys
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from soundguide.core import hookspecs
from soundguide.core.errors import DuplicatePluginError, PluginError, exception_line
from soundguide.core.registry import Clash, Registries

ENTRY_POINT_GROUP = "soundguide"
DISABLE_AUTOLOAD_ENV = "SOUNDGUIDE_DISABLE_PLUGIN_AUTOLOAD"
BUILTIN = "soundguide (built-in)"
COMMAND_LINE = "-p"

BUILTIN_PLUGINS: tuple[str, ...] = (
    "soundguide.plugins.stylegan2",
    "soundguide.plugins.nvidia",
    "soundguide.plugins.audio",
    "soundguide.plugins.text",
    "soundguide.plugins.image",
    "soundguide.plugins.latent_l2",
    "soundguide.plugins.identity",
    "soundguide.plugins.clip_space",
    "soundguide.plugins.e4e",
    "soundguide.plugins.projection",
    "soundguide.plugins.temporal",
    "soundguide.video.plugin",
    "soundguide.inversion.plugin",
    "soundguide.app.plugin",
    "soundguide.training.plugin",
    "soundguide.batch.plugin",
    "soundguide.evaluation.plugin",
)
"""Modules of the built-in plugins, registered like any third-party plugin."""


class PluginLoadWarning(UserWarning):
    """A plugin could not be imported or registered and was skipped."""


class PluginShadowedWarning(UserWarning):
    """``-p NAME`` imported an installed ``NAME``, not the file of that name in the folder."""


@dataclass
class PluginSource:
    module: str
    distribution: str


class SoundguidePluginManager(pluggy.PluginManager):
    """A pluggy PluginManager that remembers where each plugin came from."""

    def __init__(self) -> None:
        pluggy.PluginManager.__init__(self, hookspecs.PROJECT)
        self.add_hookspecs(hookspecs)
        self.sources: dict[str, PluginSource] = {}
        self.failures: list[str] = []

    def register_module(self, module: ModuleType, name: str, distribution: str) -> None:
        if self.get_plugin(name) is not None or self.is_registered(module):
            return
        self.register(module, name=name)
        self.sources[name] = PluginSource(module.__name__, distribution)

    def fail(self, message: str) -> None:
        self.failures.append(message)
        warnings.warn(message, PluginLoadWarning, stacklevel=3)


def _import_guarded(pm: SoundguidePluginManager, load: Any, label: str) -> Any:
    """``load()``, or None with a warning if it raises anything but Ctrl-C."""
    try:
        return load()
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # a plugin's sys.exit() must not end the program
        pm.fail(f"plugin {label} failed to import ({exception_line(exc, 300)}); skipped")
        return None


def _entry_points() -> Iterable[importlib.metadata.EntryPoint]:
    return importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)


def _installed_spec(name: str) -> importlib.machinery.ModuleSpec | None:
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None


def _same_file(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and Path(a).resolve() == Path(b).resolve()


def _load_from_folder(spec: importlib.machinery.ModuleSpec) -> ModuleType:
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as an import does, so the module can find itself
    try:
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    except BaseException:
        sys.modules.pop(spec.name, None)
        raise
    return module


def import_plugin_module(name: str, folder: str | os.PathLike[str] | None = None) -> ModuleType:
    """Import the ``-p`` module ``name``: installed first, then from ``folder``.

    When no importable module has ``name``'s top-level name, ``folder/top.py``
    (or the package folder ``folder/top/``) is loaded from its path and entered
    in ``sys.modules``; ``sys.path`` is left alone. When an installed module
    wins over a file of the same name in ``folder``, a
    :class:`PluginShadowedWarning` says so.

    Raises :class:`PluginError` (one line) for anything the import raises,
    ``SystemExit`` included; ``KeyboardInterrupt`` passes through.
    """
    top = name.partition(".")[0]
    try:
        if folder is not None and top and top not in sys.modules:
            local = importlib.machinery.PathFinder.find_spec(top, [os.fspath(folder)])
            installed = _installed_spec(top)
            if local is not None and installed is None:
                _load_from_folder(local)
            elif (
                local is not None
                and local.origin is not None  # not a plain folder (namespace package)
                and installed is not None
                and not _same_file(local.origin, installed.origin)
            ):
                warnings.warn(
                    f"-p {name}: imported {top!r} from {installed.origin}, not {local.origin} "
                    f"(an installed module of that name comes first; rename the file to load it)",
                    PluginShadowedWarning,
                    stacklevel=2,
                )
        return importlib.import_module(name)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        missing = isinstance(exc, ModuleNotFoundError) and exc.name in (name, top)
        hint = (
            "-p takes an importable module name, or the name of a .py file or package "
            "folder in the current folder"
            if missing
            else "the error comes from the plugin module's own code"
        )
        raise PluginError(
            f"cannot import plugin module {name!r}: {exception_line(exc, 300)}", hint=hint
        ) from None


def get_plugin_manager(
    entry_points: bool = True,
    plugins: Sequence[str | ModuleType] = (),
    folder: str | os.PathLike[str] | None = None,
) -> SoundguidePluginManager:
    """Build a plugin manager with the built-ins, entry points and extra modules.

    ``plugins`` are modules (or import paths) registered as if given with
    ``-p`` on the command line; a name no installed module has is looked up in
    ``folder`` (see :func:`import_plugin_module`). Entry points are skipped when
    ``entry_points`` is false or ``SOUNDGUIDE_DISABLE_PLUGIN_AUTOLOAD`` is set
    to a true value.
    """
    pm = SoundguidePluginManager()
    for name in BUILTIN_PLUGINS:
        module = _import_guarded(
            pm, lambda name=name: importlib.import_module(name), f"{name!r} (built-in)"
        )
        if module is not None:
            pm.register_module(module, name, BUILTIN)
    autoload = os.environ.get(DISABLE_AUTOLOAD_ENV, "").strip().lower() in ("", "0", "false", "no")
    if entry_points and autoload:
        for ep in _entry_points():
            dist = ep.dist
            distribution = f"{dist.name} {dist.version}" if dist is not None else "?"
            label = f"{ep.name!r} ({ep.value}, from {distribution})"
            loaded = _import_guarded(pm, ep.load, label)
            if loaded is None:
                continue
            if not isinstance(loaded, ModuleType):
                pm.fail(f"plugin {label} is not a module; skipped")
                continue
            pm.register_module(loaded, ep.name, distribution)
    for plugin in plugins:
        if isinstance(plugin, ModuleType):
            pm.register_module(plugin, plugin.__name__, COMMAND_LINE)
            continue
        pm.register_module(import_plugin_module(plugin, folder), plugin, COMMAND_LINE)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {exc.plugin!r} implements an unknown hook: {exc}") from None
    return pm


def _duplicate_message(clashes: Sequence[Clash], owner: tuple[str, str]) -> str:
    first = clashes[0]
    message = (
        f"{first.kind} {first.name!r} is registered twice: by plugin {first.owner[0]!r} "
        f"({first.owner[1]}) and by plugin {owner[0]!r} ({owner[1]})"
    )
    if len(clashes) > 1:
        message += f" (and {len(clashes) - 1} more name{'s' if len(clashes) > 2 else ''})"
    return message


def _duplicate_hint(clashes: Sequence[Clash], owner: tuple[str, str]) -> str:
    earlier = clashes[0].owner[1]
    if earlier == BUILTIN:
        return (
            f"a built-in name cannot be taken over; {DISABLE_AUTOLOAD_ENV}=1 turns "
            "installed plugins off"
        )
    if owner[1] == COMMAND_LINE and earlier == COMMAND_LINE:
        return "pass only one of them with -p"
    return f"to choose, set {DISABLE_AUTOLOAD_ENV}=1 and load the one you want with -p MODULE"


def collect_registries(
    pm: SoundguidePluginManager, registries: Registries | None = None
) -> Registries:
    """Call every plugin's register hooks, one plugin at a time, all or nothing.

    Each plugin registers into registrars of its own, stamped with the plugin
    (for ``soundguide plugins`` and duplicate-name messages); they are merged
    into ``registries`` (a new one by default; the CLI passes one with its own
    command names reserved) only if all its hooks returned and none of its
    names is taken. Otherwise the plugin is skipped with one warning line --
    or, for a ``-p`` module, a :class:`PluginError` /
    :class:`DuplicatePluginError` is raised.
    """
    registries = registries if registries is not None else Registries()
    hook_names = list(registries.by_hook())
    for name, plugin in pm.list_name_plugin():  # registration order: built-ins first
        if plugin is None:  # blocked
            continue
        impls = [
            (hook_name, impl)
            for hook_name in hook_names
            for impl in getattr(pm.hook, hook_name).get_hookimpls()
            if impl.plugin is plugin
        ]
        if not impls:
            continue
        source = pm.sources.get(name)
        owner = (source.module, source.distribution) if source else (name, "?")
        explicit = owner[1] == COMMAND_LINE
        staged = Registries()
        registrars = staged.by_hook()
        for registrar in registrars.values():
            registrar._current = owner
        for hook_name, impl in impls:
            try:
                impl.function(**{arg: registrars[hook_name] for arg in impl.argnames})
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # SystemExit in a hook must not end the program
                message = f"plugin {owner[0]!r} ({owner[1]}) failed in {hook_name} ({exception_line(exc, 300)})"
                if explicit:
                    raise PluginError(
                        message, hint="the error comes from the plugin module's own code"
                    ) from None
                pm.fail(f"{message}; skipped")
                break
        else:
            clashes = registries.clashes(staged)
            if not clashes:
                registries.merge(staged)
                continue
            message = _duplicate_message(clashes, owner)
            hint = _duplicate_hint(clashes, owner)
            if explicit:
                raise DuplicatePluginError(message, hint=hint)
            pm.fail(f"{message}; plugin {owner[0]!r} skipped ({hint})")
    return registries


def load_registries(
    entry_points: bool = True,
    plugins: Sequence[str | ModuleType] = (),
    folder: str | os.PathLike[str] | None = None,
    registries: Registries | None = None,
) -> Registries:
    """Shortcut: build the plugin manager and collect what its plugins register."""
    return collect_registries(
        get_plugin_manager(entry_points=entry_points, plugins=plugins, folder=folder), registries
    )
