"""Hook specifications: soundguide plugins only *register* things.

A plugin module implements any of these hooks with ``@soundguide.hookimpl``.
Each hook receives a typed registrar; calling ``registry.add(SomeClass)``
makes the class available under the name in its ``Config.type`` literal.
A plugin's registrations count all or nothing (see :mod:`soundguide.core.plugins`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import click

    from soundguide.core.checkpoints import WeightsRegistry
    from soundguide.core.registry import (
        GeneratorRegistry,
        GuidanceRegistry,
        InverterRegistry,
        RegularizerRegistry,
    )

PROJECT = "soundguide"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_generators(registry: GeneratorRegistry) -> None:
    """Add :class:`soundguide.Generator` subclasses with ``registry.add(cls)``."""


@hookspec
def register_guidances(registry: GuidanceRegistry) -> None:
    """Add :class:`soundguide.Guidance` subclasses with ``registry.add(cls)``."""


@hookspec
def register_regularizers(registry: RegularizerRegistry) -> None:
    """Add :class:`soundguide.Regularizer` subclasses with ``registry.add(cls)``."""


@hookspec
def register_inverters(registry: InverterRegistry) -> None:
    """Add :class:`soundguide.Inverter` subclasses (images -> latents) with ``registry.add(cls)``."""


@hookspec
def register_weights(registry: WeightsRegistry) -> None:
    """Add :class:`soundguide.KnownWeights` entries (public files fetched by name)."""


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add subcommands of ``soundguide`` with ``@cli.command()`` or ``cli.add_command(cmd)``.

    This hook runs for every ``soundguide`` command line, ``--help`` included:
    import heavy code inside the command function, not at the top of the module.
    A name the ``soundguide`` command or another plugin already has is refused.
    """
