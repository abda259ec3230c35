"""Run configs: TOML -> pydantic models built from the plugin registries.

A run config has a ``[generator]`` table, ``[[guidance]]`` and
``[[regularizer]]`` arrays of tables (each with ``type`` and ``weight``),
``[optimization]`` and ``[output]``. The union of plugin configs allowed in
each section is built from the registries after plugins load, so a
third-party guidance validates exactly like a built-in one. Every error names
its location, e.g. ``guidance.1.wieght: extra inputs are not permitted``
(indices count from 0, as in ``--set guidance.1.weight=0.5``).
"""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any, Literal, Union

from pydantic import Field, ValidationError, create_model, field_validator, model_validator

from soundguide.core.errors import ConfigError
from soundguide.core.interfaces import MAX_SEED, ConfigPath, PluginConfig, StrictModel
from soundguide.core.registry import Registries, Registry, closest, unknown_name_message

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PLUGIN_SECTIONS: dict[str, str] = {
    "generator": "generators",
    "guidance": "guidances",
    "regularizer": "regularizers",
    "inversion": "inverters",
}
"""Config section -> attribute of :class:`Registries`. ``generator`` and ``inversion``
are one table each (:data:`SINGLE_SECTIONS`), the others lists."""
SINGLE_SECTIONS = ("generator", "inversion")
OPTIONAL_SECTIONS = ("inversion",)
"""Sections a config may leave out (None in a dumped config)."""
DEFAULT_INVERTER = "projection"
"""The ``[inversion]`` type when ``optimization.image`` is set and the config has none:
works with every generator."""


RUN_PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "optimization": {
            "lr": 0.1,
            "schedule": "cosine",
            "rampup": 0.05,
            "rampdown": 0.25,
            "mode": "edit",
            "truncation": 0.7,
        },
        # the original code always adds lambda * sum((w0 - w)^2) in edit mode
        "regularizer": [{"type": "latent_l2"}],
    }
}
"""Run presets: defaults for [optimization] and required terms. Each plugin adds its
own defaults for a preset in its ``presets`` class attribute. Values written in
the config (or with --set) always win."""


MAX_STEPS = 100_000
"""Most optimizer updates one run may make (a 256 px edit uses 300)."""
MAX_BATCH = 16
"""Default of ``optimization.max_batch``: most items optimized together in one run.
Chosen so that a 24 GB GPU holds a full batch at 1024 px; the memory each item
takes is measured by ``benchmarks/batch_memory.py`` and listed in the README."""
MAX_DEPTH = 16
"""Deepest nesting of tables and arrays a run config may have (a real one has 4)."""


class OptimizationConfig(StrictModel):
    preset: Literal["paper"] | None = Field(
        None,
        description="'paper': the original code's settings as defaults (see the README).",
    )
    steps: int = Field(
        300, ge=0, le=MAX_STEPS, description=f"Number of optimizer updates (at most {MAX_STEPS})."
    )
    lr: float = Field(0.1, gt=0, allow_inf_nan=False, description="Peak learning rate of Adam.")
    schedule: Literal["cosine", "constant"] = Field(
        "cosine", description="'cosine': StyleCLIP's ramp-up and cosine ramp-down; or constant."
    )
    rampup: float = Field(0.05, ge=0, le=1, description="Fraction of the run spent ramping up.")
    rampdown: float = Field(0.25, ge=0, le=1, description="Fraction spent ramping down.")
    seed: int | list[int] = Field(
        0,
        description="Seed of the random start latent (0 to 2**64 - 1); a list gives one batch "
        "item per seed.",
    )
    mode: Literal["edit", "generate"] = Field(
        "edit", description="'edit': start from a random truncated latent; 'generate': the mean."
    )
    truncation: float = Field(0.7, ge=0, allow_inf_nan=False)
    latent: ConfigPath | None = Field(None, description="Start from this latent file instead.")
    image: ConfigPath | list[ConfigPath] | None = Field(
        None,
        description="Start from this photo, inverted as [inversion] says (cached); a list "
        "gives one batch item per photo.",
    )
    latent_index: int | list[int] | None = Field(
        None, description="Rows of a latent stack (N, L, D) to use; default all."
    )
    batch: int | None = Field(
        None, ge=1, description="Items optimized together; default inferred (1 when nothing says)."
    )
    max_batch: int = Field(
        MAX_BATCH,
        ge=1,
        description="Most items one run optimizes together (seeds, prompts, audio files or "
        "latent rows); raise it when your device has the memory.",
    )

    @field_validator("seed")
    @classmethod
    def _seeds_in_range(cls, value: int | list[int]) -> int | list[int]:
        if isinstance(value, list) and not value:
            raise ValueError("seed list is empty")
        for seed in value if isinstance(value, list) else [value]:
            if not 0 <= seed <= MAX_SEED:
                raise ValueError(f"seed {seed} is out of range: seeds are 0 to 2**64 - 1")
        return value

    @model_validator(mode="after")
    def _batch_fits(self) -> OptimizationConfig:
        if self.image is not None and self.latent is not None:
            raise ValueError("set image (a photo to invert) or latent (a latent file), not both")
        if isinstance(self.image, list) and not self.image:
            raise ValueError("image list is empty")
        if self.image is not None and isinstance(self.seed, list):
            raise ValueError(
                "image starts from photos, so a seed list has nothing to seed: remove one"
            )
        photos = len(self.image) if isinstance(self.image, list) else None
        for what, n in (
            ("batch", self.batch),
            ("seed list", _count(self.seed)),
            ("image list", photos),
        ):
            if n is not None and n > self.max_batch:
                raise ValueError(
                    f"{what} of {n} items is more than max_batch = {self.max_batch} items "
                    "optimized together; split it into several runs, or raise max_batch if "
                    "your device has the memory"
                )
        return self

    def seeds(self, n: int) -> list[int]:
        """One seed per batch item: the list as given, or ``seed + i``."""
        if isinstance(self.seed, list):
            return list(self.seed)
        if self.seed + n - 1 > MAX_SEED:
            raise ConfigError(
                f"optimization.seed: {self.seed} + {n - 1} (one seed per batch item) is beyond "
                "the largest seed, 2**64 - 1"
            )
        return [self.seed + i for i in range(n)]


def _count(seed: int | list[int]) -> int | None:
    return len(seed) if isinstance(seed, list) else None


class OutputConfig(StrictModel):
    dir: ConfigPath = Field(Path("runs/edit"), description="Output folder.")
    save_every: int = Field(
        0, ge=0, description="Save steps/NNNNN.pt and .png every this many updates (0: never)."
    )
    gif: bool = Field(False, description="Write trajectory.gif of the saved steps.")


class RunConfig(StrictModel):
    """Base of the run-config model; :func:`run_config_model` adds the plugin sections."""

    optimization: OptimizationConfig = Field(default_factory=OptimizationConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    generator: PluginConfig
    guidance: list[PluginConfig] = Field(default_factory=list)
    regularizer: list[PluginConfig] = Field(default_factory=list)
    inversion: PluginConfig | None = None
    """How ``optimization.image`` photos are inverted (used only with it)."""
    video: dict[str, Any] | None = Field(
        None,
        description="Settings of `soundguide video` (a [video] table), validated by that "
        "command; other commands do not read it.",
    )

    @model_validator(mode="after")
    def _at_least_one_source(self) -> RunConfig:
        if not self.guidance:
            raise ValueError("no [[guidance]] source: add at least one (e.g. type = 'text')")
        if all(g.weight == 0 for g in self.guidance):
            raise ValueError(
                "every [[guidance]] source has weight 0, so nothing steers the edit: "
                "give at least one a non-zero weight"
            )
        return self


def _plugin_union(registry: Registry) -> Any:
    models = tuple(entry.config_model for entry in registry)
    if not models:
        return registry.config_base
    return Annotated[Union[models], Field(discriminator="type")]  # noqa: UP007


def run_config_model(registries: Registries) -> type[RunConfig]:
    """The pydantic model of a run for these registries (built once per registries)."""
    if registries.config_model is not None:
        return registries.config_model
    generator = _plugin_union(registries.generators)
    guidance = _plugin_union(registries.guidances)
    regularizer = _plugin_union(registries.regularizers)
    inversion = _plugin_union(registries.inverters)
    model = create_model(
        "RunConfig",
        __base__=RunConfig,
        generator=(generator, ...),
        guidance=(list[guidance], Field(default_factory=list)),
        regularizer=(list[regularizer], Field(default_factory=list)),
        inversion=(inversion | None, None),
    )
    registries.config_model = model
    return model


# -- errors -------------------------------------------------------------------------


def _loc_text(loc: Sequence[Any]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


Problem = tuple[tuple[str, ...], str]
"""A config error: its location (``("guidance", "1", "weight")``) and the message."""


def _check_plugin_types(data: Mapping[str, Any], registries: Registries) -> list[Problem]:
    problems: list[Problem] = []
    for section, attr in PLUGIN_SECTIONS.items():
        registry: Registry = getattr(registries, attr)
        if section not in data or (section in OPTIONAL_SECTIONS and data[section] is None):
            continue
        value = data[section]
        if section in SINGLE_SECTIONS:
            items: list[tuple[tuple[str, ...], Any]] = [((section,), value)]
        elif isinstance(value, list):
            items = [((section, str(i)), item) for i, item in enumerate(value)]
        else:
            problems.append(((section,), f"expected an array of tables ([[{section}]])"))
            continue
        for loc, item in items:
            if not isinstance(item, Mapping):
                problems.append((loc, "expected a table with a 'type' key"))
            elif "type" not in item:
                names = ", ".join(registry.names()) or "none"
                problems.append(((*loc, "type"), f"missing; available {registry.kind}s: {names}"))
            elif not isinstance(item["type"], str) or item["type"] not in registry:
                message = unknown_name_message(registry.kind, str(item["type"]), registry.names())
                problems.append(((*loc, "type"), message))
    return problems


def _fields_at(raw_loc: Sequence[Any], registries: Registries) -> list[str]:
    """The keys allowed in the table an ``extra_forbidden`` error points into."""
    models: dict[str, type] = {
        "optimization": OptimizationConfig,
        "output": OutputConfig,
    }
    if len(raw_loc) == 1:
        return list(RunConfig.model_fields)
    head = raw_loc[0]
    if head in models and len(raw_loc) == 2:
        return list(models[head].model_fields)
    # a discriminated union puts the plugin's type into the location
    single = head in SINGLE_SECTIONS
    tag = raw_loc[1] if single else raw_loc[2] if len(raw_loc) > 2 else None
    if head in PLUGIN_SECTIONS and isinstance(tag, str):
        registry: Registry = getattr(registries, PLUGIN_SECTIONS[head])
        if tag in registry and len(raw_loc) == (3 if single else 4):
            return list(registry.get(tag).Config.model_fields)
    return []


def validation_problem(
    error: Mapping[str, Any], loc: Sequence[Any], allowed: Sequence[str] = ()
) -> Problem:
    """One pydantic error as (location, message): the message starts in lower case,
    without pydantic's ``Value error, `` prefix; an unknown key gets the closest of
    ``allowed`` (the keys of its table) as a did-you-mean."""
    message = str(error["msg"])
    if error["type"] == "value_error":
        message = message.removeprefix("Value error, ")
    message = message[:1].lower() + message[1:]
    if error["type"] == "extra_forbidden" and loc:
        match = closest(str(loc[-1]), allowed)
        if match is not None:
            message += f" (did you mean {match!r}?)"
    return tuple(str(part) for part in loc), message


def _problem(error: Mapping[str, Any], registries: Registries) -> Problem:
    raw = list(error["loc"])
    loc = list(raw)
    # a discriminated union puts the tag into the location: guidance.1.text.wieght
    if loc and loc[0] in SINGLE_SECTIONS and len(loc) > 1:
        del loc[1]
    elif loc and loc[0] in PLUGIN_SECTIONS and len(loc) > 2:
        del loc[2]
    allowed = _fields_at(raw, registries) if error["type"] == "extra_forbidden" else []
    return validation_problem(error, loc, allowed)


RUN_CONFIG_HINT = (
    "`soundguide plugins` lists the plugin types; `soundguide config show` prints a "
    "config with every key and its default"
)


def _set_name(loc: tuple[str, ...]) -> str:
    return f"--set {_loc_text(loc)}"


def config_error(
    source: str,
    problems: Sequence[Problem],
    overridden: Sequence[Sequence[str]] = (),
    *,
    override_name: Callable[[tuple[str, ...]], str] = _set_name,
    hint: str | None = RUN_CONFIG_HINT,
) -> ConfigError:
    """One ConfigError line: ``SOURCE: loc: message; loc: message``, at most five problems.

    Problems at keys in ``overridden`` (set on the command line) are named by
    ``override_name(loc)`` (``--set guidance.0.weight``) instead of ``source``.
    """

    def from_command_line(loc: tuple[str, ...]) -> bool:
        return any(tuple(key[: len(loc)]) == loc[: len(key)] for key in overridden)

    in_file = [
        f"{_loc_text(loc)}: {message}" for loc, message in problems if not from_command_line(loc)
    ]
    by_flag = [
        f"{override_name(loc)}: {message}" for loc, message in problems if from_command_line(loc)
    ]
    parts = ([f"{source}: " + "; ".join(in_file)] if in_file else []) + by_flag
    shown = "; ".join(parts[:5])
    more = f" (and {len(parts) - 5} more)" if len(parts) > 5 else ""
    return ConfigError(f"{shown}{more}", hint=hint)


# -- loading ------------------------------------------------------------------------


def parse_override(text: str) -> tuple[list[str], Any]:
    """``section.key=value`` -> (["section", "key"], value); the value is read as TOML when it parses."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(
            f"--set {text!r}: expected section.key=value, e.g. optimization.steps=100"
        )
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    except RecursionError:
        raise ConfigError(
            f"--set {key}: the value is nested deeper than {MAX_DEPTH} levels"
        ) from None
    if len(key.split(".")) > MAX_DEPTH:
        raise ConfigError(f"--set {key}: the key is nested deeper than {MAX_DEPTH} levels")
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``--set`` overrides to raw config data (values as if written in the file)."""
    for text in overrides:
        path, value = parse_override(text)
        node: Any = data
        for depth, part in enumerate(path[:-1]):
            where = ".".join(path[: depth + 1])
            if isinstance(node, list):
                node = node[_list_index(node, part, where)]
            else:
                node = node.setdefault(part, {})
            if not isinstance(node, (dict, list)):
                raise ConfigError(f"--set {text!r}: {where} is a value, not a table")
        last = path[-1]
        if isinstance(node, list):
            node[_list_index(node, last, ".".join(path))] = value
        else:
            node[last] = value
    return data


def _list_index(node: list[Any], part: str, where: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"--set: {where}: no such entry (there are {len(node)}, counted from 0)")
    return int(part)


def read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"config file not found: {path}",
            hint="check the path; `soundguide demo` writes an example config you can start from",
        ) from None
    except IsADirectoryError:
        raise ConfigError(f"config path is a directory, not a file: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"{path}: invalid TOML: {exc}",
            hint='TOML strings need quotes (path = "a.wav"); see https://toml.io',
        ) from None
    except RecursionError:
        data = None
    if data is None or nesting_depth(data) > MAX_DEPTH:
        raise ConfigError(
            f"{path}: tables and arrays are nested deeper than {MAX_DEPTH} levels",
            hint="a run config has [sections], [[arrays of tables]] and values; see the README",
        )
    return data


def nesting_depth(data: Any) -> int:
    """How deeply tables and arrays nest in parsed config data (a value alone: 0)."""
    depth, level = 0, [data]
    while level:
        containers = [v for v in level if isinstance(v, dict | list)]
        if not containers:
            break
        depth += 1
        if depth > MAX_DEPTH:
            break  # deep enough to refuse; never walk a hostile structure to its end
        level = [item for c in containers for item in (c.values() if isinstance(c, dict) else c)]
    return depth


def apply_preset(data: dict[str, Any], registries: Registries) -> dict[str, Any]:
    """Fill in the defaults of ``optimization.preset`` where the config is silent."""
    optimization = data.get("optimization")
    name = optimization.get("preset") if isinstance(optimization, dict) else None
    if name not in RUN_PRESETS:
        return data  # no preset, or an unknown one that validation reports
    preset = RUN_PRESETS[name]
    for key, value in preset["optimization"].items():
        optimization.setdefault(key, value)
    regularizers = data.setdefault("regularizer", [])
    if isinstance(regularizers, list):
        present = {r.get("type") for r in regularizers if isinstance(r, dict)}
        for required in preset["regularizer"]:
            if required["type"] not in present and required["type"] in registries.regularizers:
                regularizers.append(dict(required))
    for section, attr in PLUGIN_SECTIONS.items():
        registry: Registry = getattr(registries, attr)
        entries = data.get(section)
        entries = [entries] if section in SINGLE_SECTIONS else entries
        if not isinstance(entries, list):
            continue
        for entry in entries:
            if not isinstance(entry, dict) or entry.get("type") not in registry:
                continue
            cls = registry.get(entry["type"])
            fields = cls.Config.model_fields
            for key, value in getattr(cls, "presets", {}).get(name, {}).items():
                if key in fields:
                    entry.setdefault(key, value)
    return data


def config_from_dict(
    data: Mapping[str, Any],
    registries: Registries,
    *,
    base_dir: str | os.PathLike[str] | None = None,
    source: str = "config",
    overridden: Sequence[Sequence[str]] = (),
    override_name: Callable[[tuple[str, ...]], str] = _set_name,
) -> RunConfig:
    """Validate raw config data; relative paths resolve against ``base_dir``.

    ``overridden``: the keys ``--set`` changed (as lists of parts), so that
    errors in them name ``--set`` rather than ``source``; ``override_name(loc)``
    names such a key in an error (``soundguide batch`` names a manifest row).
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a table of sections, got {type(data).__name__}")
    if nesting_depth(data) > MAX_DEPTH:
        raise ConfigError(f"{source}: tables and arrays are nested deeper than {MAX_DEPTH} levels")
    problems = _check_plugin_types(data, registries)
    if problems:
        raise config_error(source, problems, overridden, override_name=override_name)
    data = apply_preset(copy.deepcopy(dict(data)), registries)
    optimization = data.get("optimization")
    if (
        isinstance(optimization, dict)
        and optimization.get("image") is not None
        and data.get("inversion") is None
        and DEFAULT_INVERTER in registries.inverters
    ):
        data["inversion"] = {"type": DEFAULT_INVERTER}
    model = run_config_model(registries)
    context = {"base_dir": Path(base_dir).resolve() if base_dir is not None else None}
    try:
        return model.model_validate(dict(data), context=context)
    except ValidationError as exc:
        problems = [_problem(e, registries) for e in exc.errors()]
        raise config_error(source, problems, overridden, override_name=override_name) from None


def load_config(
    path: str | os.PathLike[str],
    registries: Registries | None = None,
    overrides: Sequence[str] = (),
    *,
    plugins: Sequence[str | ModuleType] = (),
) -> RunConfig:
    """Read a TOML run config, apply ``--set`` overrides and validate it.

    ``registries``: the plugins' registrations the config may name; when None,
    the installed plugins are loaded (with the extra modules ``plugins``, as
    ``-p`` gives them). This is ``soundguide.load_config``.
    """
    if registries is None:
        from soundguide.core.plugins import load_registries

        registries = load_registries(plugins=plugins)
    elif plugins:
        raise TypeError("pass either registries or plugins, not both")
    path = Path(path)
    data = apply_overrides(read_toml(path), overrides)
    overridden = [parse_override(text)[0] for text in overrides]
    return config_from_dict(
        data, registries, base_dir=path.parent, source=str(path), overridden=overridden
    )


def tables_from_dict(
    data: Mapping[str, Any],
    registries: Registries,
    sections: Sequence[str],
    *,
    source: str = "options",
    overridden: Sequence[Sequence[str]] = (),
) -> Any:
    """Validate plugin tables alone (e.g. ``generator`` and ``inversion`` for
    ``soundguide invert``) with the errors of a run config; returns a model whose
    attributes are the sections."""
    for section in sections:
        if section not in SINGLE_SECTIONS:
            raise ValueError(f"{section!r} is not a single-table plugin section")
    problems = _check_plugin_types(data, registries)
    problems += [((s,), "missing") for s in sections if s not in data]
    if problems:
        raise config_error(source, problems, overridden)
    fields = {s: (_plugin_union(getattr(registries, PLUGIN_SECTIONS[s])), ...) for s in sections}
    model = create_model("Tables", __base__=StrictModel, **fields)
    try:
        return model.model_validate(dict(data), context={"base_dir": None})
    except ValidationError as exc:
        problems = [_problem(e, registries) for e in exc.errors()]
        raise config_error(source, problems, overridden) from None
