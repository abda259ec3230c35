"""The plugin manager: built-in plugin modules, entry points and ``-p`` modules.

Loading is guarded: a plugin that raises on import, or whose register hook
raises, is reported with one warning line naming it and skipped; the rest keep
working. ``SOUNDGUIDE_DISABLE_PLUGIN_AUTOLOAD=1`` turns entry points off.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import ModuleType

import pluggy

from soundguide.core import hookspecs
from soundguide.core.errors import DuplicatePluginError, PluginError
from soundguide.core.registry import Registries

ENTRY_POINT_GROUP = "soundguide"
DISABLE_AUTOLOAD_ENV = "SOUNDGUIDE_DISABLE_PLUGIN_AUTOLOAD"
BUILTIN = "soundguide (built-in)"
COMMAND_LINE = "-p"

BUILTIN_PLUGINS: tuple[str, ...] = (
    "soundguide.plugins.stylegan2",
    "soundguide.plugins.audio",
    "soundguide.plugins.text",
    "soundguide.plugins.image",
    "soundguide.plugins.latent_l2",
    "soundguide.plugins.identity",
)
"""Modules of the built-in plugins, registered like any third-party plugin."""


class PluginLoadWarning(UserWarning):
    """A plugin could not be imported or registered and was skipped."""


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


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _import_guarded(pm: SoundguidePluginManager, module_name: str, label: str) -> ModuleType | None:
    try:
        return importlib.import_module(module_name)
    except Exception as exc:
        pm.fail(f"plugin {label} failed to import ({_one_line(exc)}); skipped")
        return None


def _entry_points() -> Iterable[importlib.metadata.EntryPoint]:
    return importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)


def get_plugin_manager(
    entry_points: bool = True, plugins: Sequence[str | ModuleType] = ()
) -> SoundguidePluginManager:
    """Build a plugin manager with the built-ins, entry points and extra modules.

    ``plugins`` are modules (or import paths) registered as if given with
    ``-p`` on the command line. Entry points are skipped when ``entry_points``
    is false or ``SOUNDGUIDE_DISABLE_PLUGIN_AUTOLOAD`` is set to a true value.
    """
    pm = SoundguidePluginManager()
    for name in BUILTIN_PLUGINS:
        module = _import_guarded(pm, name, f"{name!r} (built-in)")
        if module is not None:
            pm.register_module(module, name, BUILTIN)
    autoload = os.environ.get(DISABLE_AUTOLOAD_ENV, "").strip().lower() in ("", "0", "false", "no")
    if entry_points and autoload:
        for ep in _entry_points():
            dist = ep.dist
            distribution = f"{dist.name} {dist.version}" if dist is not None else "?"
            label = f"{ep.name!r} ({ep.value}, from {distribution})"
            try:
                loaded = ep.load()
            except Exception as exc:
                pm.fail(f"plugin {label} failed to import ({_one_line(exc)}); skipped")
                continue
            if not isinstance(loaded, ModuleType):
                pm.fail(f"plugin {label} is not a module; skipped")
                continue
            pm.register_module(loaded, ep.name, distribution)
    for plugin in plugins:
        if isinstance(plugin, ModuleType):
            pm.register_module(plugin, plugin.__name__, COMMAND_LINE)
            continue
        try:
            module = importlib.import_module(plugin)
        except Exception as exc:
            raise PluginError(f"cannot import plugin module {plugin!r}: {_one_line(exc)}") from None
        pm.register_module(module, plugin, COMMAND_LINE)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {exc.plugin!r} implements an unknown hook: {exc}") from None
    return pm


def collect_registries(pm: SoundguidePluginManager) -> Registries:
    """Call every plugin's register hooks, one plugin at a time.

    Calling each implementation separately lets a registry record which plugin
    registered what (for ``soundguide plugins`` and duplicate-name errors) and
    drop a plugin whose hook raises without losing the others.
    """
    registries = Registries()
    for hook_name, registry in registries.by_hook().items():
        caller = getattr(pm.hook, hook_name)
        for impl in caller.get_hookimpls():  # in registration order
            source = pm.sources.get(impl.plugin_name)
            registry._current = (
                source.module if source else impl.plugin_name,
                source.distribution if source else "?",
            )
            try:
                impl.function(**{arg: registry for arg in impl.argnames})
            except DuplicatePluginError:
                raise
            except Exception as exc:
                registry._remove_plugin(registry._current[0])
                pm.fail(
                    f"plugin {registry._current[0]!r} failed in {hook_name} "
                    f"({_one_line(exc)}); skipped"
                )
            finally:
                registry._current = ("<python>", "<python>")
    return registries


def load_registries(
    entry_points: bool = True, plugins: Sequence[str | ModuleType] = ()
) -> Registries:
    """Shortcut: build the plugin manager and collect what its plugins register."""
    return collect_registries(get_plugin_manager(entry_points=entry_points, plugins=plugins))
