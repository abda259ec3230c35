"""What a run reads: its input files and weights, checked (and fetched) before anything loads.

Every plugin config lists what it reads with :meth:`PluginConfig.inputs`: by
default each path in it (``ConfigPath``) is an input file and each
``WeightsRef`` a known-weights name or a file; plugins add derived ones (the
``stylegan2`` preset's weights). :func:`check_inputs` looks at all of them at
once, so a run (or ``soundguide config check``) reports every missing file and
every weights file that cannot be had in one error, instead of failing on the
first after minutes of loading.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from soundguide.core.errors import ConfigError, WeightsError
from soundguide.core.files import os_reason

if TYPE_CHECKING:
    from soundguide.core.checkpoints import WeightsRegistry


@dataclass(frozen=True)
class Input:
    """One thing a run reads: a ``file`` that must exist, or ``weights`` (a name or a file)."""

    location: str
    """Where the config says it, e.g. ``guidance.0.path``."""
    value: str | Path
    kind: Literal["file", "weights"]


def is_weights_field(annotation: Any, metadata: list[Any] = ()) -> bool:
    """True for a ``WeightsRef`` field (also inside ``X | None`` and lists)."""
    from soundguide.core.interfaces import _resolve_weights_ref

    for item in metadata:
        if getattr(item, "func", None) is _resolve_weights_ref:
            return True
    if typing.get_origin(annotation) is typing.Annotated:
        base, *extra = typing.get_args(annotation)
        return is_weights_field(base, extra)
    return any(is_weights_field(arg) for arg in typing.get_args(annotation))


def model_inputs(model: Any, prefix: str) -> list[Input]:
    """The default of :meth:`PluginConfig.inputs`: path values and ``WeightsRef`` fields."""
    found: list[Input] = []
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        where = f"{prefix}.{name}" if prefix else name
        values = value if isinstance(value, list) else [value]
        for i, item in enumerate(values):
            at = f"{where}.{i}" if isinstance(value, list) else where
            if isinstance(item, Path):
                found.append(Input(at, item, "file"))
            elif isinstance(item, str) and is_weights_field(field.annotation, field.metadata):
                found.append(Input(at, item, "weights"))
    return found


def run_inputs(config: Any) -> list[Input]:
    """Everything a run config reads, section by section (the outputs excluded)."""
    found: list[Input] = list(config.generator.inputs("generator"))
    for section in ("guidance", "regularizer"):
        for i, plugin in enumerate(getattr(config, section)):
            if plugin.weight != 0:  # a term of weight 0 is never built, so reads nothing
                found.extend(plugin.inputs(f"{section}.{i}"))
    opt = config.optimization
    if opt.latent is not None:
        found.append(Input("optimization.latent", opt.latent, "file"))
    if opt.image is not None:
        images = opt.image if isinstance(opt.image, list) else [opt.image]
        for i, path in enumerate(images):
            where = (
                f"optimization.image.{i}" if isinstance(opt.image, list) else "optimization.image"
            )
            found.append(Input(where, path, "file"))
        inversion = getattr(config, "inversion", None)
        if inversion is not None:
            found.extend(inversion.inputs("inversion"))
    return found


def looks_like_file(value: str | Path) -> bool:
    """A weights reference that names a file rather than a known-weights entry."""
    from soundguide.core.interfaces import _FILE_SUFFIXES

    path = Path(value).expanduser()
    return isinstance(value, Path) or path.is_absolute() or path.suffix.lower() in _FILE_SUFFIXES


def file_problem(path: Path) -> str | None:
    """Why ``path`` cannot be read as an input file, or None."""
    path = Path(path).expanduser()
    if not path.exists():
        return "not found"
    if path.is_dir():
        return "a folder, not a file"
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except OSError as exc:
        return f"unreadable ({os_reason(exc)})"
    return None


def check_inputs(
    inputs: list[Input],
    weights: WeightsRegistry,
    *,
    download: bool,
    progress: bool = True,
    source: str = "the run",
) -> list[str]:
    """Check every input at once; with ``download``, fetch the known weights not yet here.

    Returns notes for weights that are known but not downloaded (``download``
    false). Raises one :class:`ConfigError` listing every input that is
    missing, unreadable, unknown or could not be downloaded.
    """
    from soundguide.core.registry import unknown_name_message

    problems: list[str] = []
    notes: list[str] = []
    how: list[str] = []  # how to get the files that have no download
    seen: set[str] = set()
    for item in inputs:
        value = item.value
        if item.kind == "file" or (
            Path(str(value)).expanduser().exists() or looks_like_file(value)
        ):
            why = file_problem(Path(value))
            if why is not None:
                problems.append(f"{item.location} = {value} ({why})")
            continue
        name = str(value)
        if name in seen:
            continue
        seen.add(name)
        if name not in weights:
            problems.append(
                f"{item.location}: {unknown_name_message('weights name', name, [e.name for e in weights])}"
                "; no such file either"
            )
            continue
        local = weights.local_path(name)
        if local.exists():
            continue
        entry = weights.get(name)
        if entry.url is None:
            problems.append(f"{item.location}: {name!r} has no public download; put it at {local}")
            if entry.description:
                how.append(f"{name}: {entry.description}")
        elif not download:
            notes.append(f"{name} is not downloaded yet: {entry.url} -> {local}")
        else:
            try:
                weights.fetch(name, progress=progress)
            except WeightsError as exc:
                problems.append(f"{item.location}: {exc.message}")
    if problems:
        count = f"{len(problems)} input{'s' if len(problems) > 1 else ''}"
        raise ConfigError(
            f"{count} of {source} cannot be used: " + "; ".join(problems),
            hint="; ".join(
                how
                + [
                    "fix the paths (relative ones resolve against the config's folder); "
                    "`soundguide weights list` shows each known file's download address and "
                    "where it is expected offline"
                ]
            ),
        )
    return notes
