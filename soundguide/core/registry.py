"""Typed registrars: plugin name -> plugin class (and its pydantic ``Config``), and commands.

Each entry remembers the plugin (module and distribution) that registered it.
Commands are registered on a :class:`CommandRegistry`, a ``click.Group`` (what
``register_commands`` receives, as in simonw/llm).
:class:`Registries` holds one registrar per kind; the plugin manager gives
each plugin a fresh :class:`Registries` of its own, then checks it against
the shared one (:meth:`Registries.clashes`) and merges it only when no name
is taken (:meth:`Registries.merge`), so a plugin is registered all or nothing.
"""

from __future__ import annotations

import difflib
import typing
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import click

from soundguide.core.checkpoints import WeightsRegistry
from soundguide.core.errors import DuplicatePluginError, PluginError, UnknownPluginError
from soundguide.core.interfaces import (
    Generator,
    GeneratorConfig,
    Guidance,
    GuidanceConfig,
    Inverter,
    InverterConfig,
    PluginConfig,
    Regularizer,
    RegularizerConfig,
)

T = TypeVar("T")


def closest(name: str, options: Iterable[str]) -> str | None:
    matches = difflib.get_close_matches(name, list(options), n=1, cutoff=0.5)
    return matches[0] if matches else None


def unknown_name_message(kind: str, name: str, options: Iterable[str]) -> str:
    """``unknown guidance 'sond'; available: audio, image, text (did you mean 'audio'?)``"""
    names = sorted(options)
    message = f"unknown {kind} {name!r}; available: {', '.join(names) if names else 'none'}"
    match = closest(name, names)
    if match is not None:
        message += f" (did you mean {match!r}?)"
    return message


def plugin_type_name(cls: type) -> str:
    """The name in ``cls.Config.type``'s ``Literal``."""
    config = getattr(cls, "Config", None)
    if not (isinstance(config, type) and issubclass(config, PluginConfig)):
        raise PluginError(f"{cls.__qualname__} has no nested pydantic Config (a PluginConfig)")
    annotation = config.model_fields["type"].annotation
    if typing.get_origin(annotation) is not typing.Literal or len(typing.get_args(annotation)) != 1:
        raise PluginError(
            f"{cls.__qualname__}.Config.type must be a Literal with one name, "
            f"e.g. type: Literal['my-source'] = 'my-source'"
        )
    return str(typing.get_args(annotation)[0])


@dataclass(frozen=True)
class PluginEntry(Generic[T]):
    name: str
    cls: type[T]
    plugin: str
    """The plugin module (or object) that registered it."""
    distribution: str
    """Where the plugin came from: 'soundguide (built-in)', 'pkg 1.0', or '-p'."""

    @property
    def config_model(self) -> type[PluginConfig]:
        return self.cls.Config  # type: ignore[attr-defined]


class Registry(Generic[T]):
    """Plugin classes of one kind, by name."""

    kind: str = "plugin"
    base: type = object
    config_base: type[PluginConfig] = PluginConfig

    def __init__(self) -> None:
        self._entries: dict[str, PluginEntry[T]] = {}
        self._current = ("<python>", "<python>")

    def add(self, cls: type[T]) -> type[T]:
        """Register a plugin class; its name comes from ``cls.Config.type``."""
        if not (isinstance(cls, type) and issubclass(cls, self.base)):
            raise PluginError(
                f"{self.kind} plugins must subclass soundguide.{self.base.__name__}; "
                f"got {cls!r} from plugin {self._current[0]!r}"
            )
        if not issubclass(cls.Config, self.config_base):  # type: ignore[attr-defined]
            raise PluginError(
                f"{cls.__qualname__}.Config must subclass soundguide.{self.config_base.__name__}"
            )
        name = plugin_type_name(cls)
        if name in self._entries:
            other = self._entries[name]
            raise DuplicatePluginError(
                f"{self.kind} {name!r} is registered twice: by plugin {other.plugin!r} "
                f"({other.distribution}) and by plugin {self._current[0]!r} ({self._current[1]})"
            )
        self._entries[name] = PluginEntry(name, cls, *self._current)
        return cls

    def get(self, name: str) -> type[T]:
        return self.entry(name).cls

    def entry(self, name: str) -> PluginEntry[T]:
        if name not in self._entries:
            raise UnknownPluginError(unknown_name_message(self.kind, name, self._entries))
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[PluginEntry[T]]:
        return iter(self._entries[name] for name in self.names())

    def __len__(self) -> int:
        return len(self._entries)


class GeneratorRegistry(Registry[Generator]):
    kind = "generator"
    base = Generator
    config_base = GeneratorConfig


class GuidanceRegistry(Registry[Guidance]):
    kind = "guidance"
    base = Guidance
    config_base = GuidanceConfig


class RegularizerRegistry(Registry[Regularizer]):
    kind = "regularizer"
    base = Regularizer
    config_base = RegularizerConfig


class InverterRegistry(Registry[Inverter]):
    kind = "inverter"
    base = Inverter
    config_base = InverterConfig


class CommandRegistry(click.Group):
    """The ``soundguide`` subcommands plugins add: ``@cli.command()`` or ``cli.add_command(cmd)``.

    A ``click.Group`` that remembers which plugin added each command and
    refuses a name taken twice. ``reserved`` names belong to the ``soundguide``
    command itself (``edit``, ``config``...): no plugin may take them.
    """

    kind = "command"

    def __init__(self) -> None:
        super().__init__(name="soundguide")
        self._current = ("<python>", "<python>")
        self._owners: dict[str, tuple[str, str]] = {}
        self.reserved: dict[str, tuple[str, str]] = {}

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        name = name or cmd.name
        if not name:
            raise PluginError(f"a command of plugin {self._current[0]!r} has no name")
        if name in self.commands or name in self.reserved:
            other = self.owner(name)
            raise DuplicatePluginError(
                f"command {name!r} is registered twice: by plugin {other[0]!r} ({other[1]}) "
                f"and by plugin {self._current[0]!r} ({self._current[1]})"
            )
        super().add_command(cmd, name)
        self._owners[name] = self._current

    def reserve(self, names: Iterable[str], owner: tuple[str, str]) -> None:
        """Keep ``names`` (the host command's own subcommands) from every plugin."""
        for name in names:
            self.reserved[name] = owner

    def owner(self, name: str) -> tuple[str, str]:
        """(plugin module, distribution) of the command ``name`` (or of a reserved name)."""
        return self._owners.get(name) or self.reserved[name]

    def names(self) -> list[str]:
        """The plugins' commands, sorted (reserved names not included)."""
        return sorted(self.commands)


@dataclass(frozen=True)
class Clash:
    """A name one plugin wants that an earlier plugin already registered."""

    kind: str
    name: str
    owner: tuple[str, str]
    """(plugin module, distribution) of the earlier plugin."""


@dataclass
class Registries:
    """Everything the loaded plugins registered."""

    generators: GeneratorRegistry = field(default_factory=GeneratorRegistry)
    guidances: GuidanceRegistry = field(default_factory=GuidanceRegistry)
    regularizers: RegularizerRegistry = field(default_factory=RegularizerRegistry)
    inverters: InverterRegistry = field(default_factory=InverterRegistry)
    weights: WeightsRegistry = field(default_factory=WeightsRegistry)
    commands: CommandRegistry = field(default_factory=CommandRegistry)
    config_model: Any = field(default=None, init=False, repr=False, compare=False)
    """The run-config model built from these registries (see core.config)."""

    def plugin_registries(self) -> tuple[Registry, ...]:
        """The registrars of plugin classes, in the order ``soundguide plugins`` lists them."""
        return (self.generators, self.guidances, self.regularizers, self.inverters)

    def by_hook(self) -> Mapping[str, Registry | WeightsRegistry | CommandRegistry]:
        return {
            "register_generators": self.generators,
            "register_guidances": self.guidances,
            "register_regularizers": self.regularizers,
            "register_inverters": self.inverters,
            "register_weights": self.weights,
            "register_commands": self.commands,
        }

    def _owners(self) -> Iterator[tuple[str, str, tuple[str, str]]]:
        """(kind, name, (plugin, distribution)) of everything registered."""
        for registry in self.plugin_registries():
            for entry in registry:
                yield registry.kind, entry.name, (entry.plugin, entry.distribution)
        for weights in self.weights:
            yield "known weights", weights.name, self.weights.owner(weights.name)
        for name in (*self.commands.reserved, *self.commands.commands):
            yield "command", name, self.commands.owner(name)

    def clashes(self, other: Registries) -> list[Clash]:
        """Names in ``other`` that are already registered here, with their owners here."""
        taken = {(kind, name): owner for kind, name, owner in self._owners()}
        return [
            Clash(kind, name, taken[kind, name])
            for kind, name, _ in other._owners()
            if (kind, name) in taken
        ]

    def merge(self, other: Registries) -> None:
        """Add everything in ``other``, keeping who registered it; no name may clash."""
        pairs = zip(self.by_hook().values(), other.by_hook().values(), strict=True)
        for mine, theirs in pairs:
            try:
                if isinstance(theirs, WeightsRegistry):
                    for weights in theirs:
                        mine._current = theirs.owner(weights.name)
                        mine.add(weights)
                elif isinstance(theirs, CommandRegistry):
                    for name, command in theirs.commands.items():
                        mine._current = theirs.owner(name)
                        mine.add_command(command, name)
                else:
                    for entry in theirs:
                        mine._current = (entry.plugin, entry.distribution)
                        mine.add(entry.cls)
            finally:
                mine._current = ("<python>", "<python>")
