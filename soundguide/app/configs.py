"""What the page holds -> a run config, validated as a TOML file is; and back to TOML.

The page never builds plugins itself: :func:`run_data` writes the raw tables a
TOML file would hold, :func:`validate` hands them to
:func:`soundguide.core.config.config_from_dict` (so a bad value gets the CLI's
one-line error) and :func:`config_toml` writes them out again for "copy as
TOML". Uploads are checked here too, with the CLI's own readers: an audio file
by its header (at most :data:`MAX_AUDIO_SECONDS`), a picture by its size (at
most :data:`MAX_IMAGE_PIXELS`). Nothing here imports gradio.
"""

from __future__ import annotations

import dataclasses
import shutil
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic_core import PydanticUndefined

from soundguide.core.config import config_from_dict
from soundguide.core.errors import AudioError, ConfigError
from soundguide.core.registry import Registries

MAX_AUDIO_SECONDS = 600.0
"""Longest audio upload: 10 minutes."""
MAX_IMAGE_PIXELS = 50_000_000
"""Largest picture upload (width x height): 50 megapixels."""
MAX_UPLOAD_BYTES = 1024 * 1024 * 1024
"""What the server accepts at all (10 min of 32-bit 8-channel 48 kHz audio is 920 MB);
the checks above then read the file's header."""
MAX_APP_SEED = 2**63 - 1
"""Largest seed the page offers: TOML integers are signed 64-bit."""
BUILTIN_SOURCES = ("audio", "text", "image")
"""Sources the page has its own slots for; other guidance types get a generated form."""
START_MODES = ("seed", "mean latent", "latent file", "photo")


# -- uploads ------------------------------------------------------------------------


def check_audio(path: str | Path, *, limit: float = MAX_AUDIO_SECONDS) -> float:
    """The duration of an audio upload in seconds; :class:`AudioError` (the CLI's
    message) for a file soundfile cannot read or one longer than ``limit``."""
    from soundguide.encoders.audio import audio_header

    path = Path(path)
    rate, frames, _channels = audio_header(path)
    seconds = frames / rate
    if seconds > limit:
        raise AudioError(
            f"audio {path.name} is {seconds / 60:.1f} minutes long; the app takes at most "
            f"{limit / 60:g} minutes",
            hint="cut the part you want (the guidance uses 10 s of it)",
        )
    return seconds


def check_image(path: str | Path, *, what: str = "image", limit: int = MAX_IMAGE_PIXELS) -> None:
    """:class:`~soundguide.core.errors.ImageError` for a file that is not a picture
    or has more than ``limit`` pixels (read as the CLI reads pictures)."""
    from soundguide.core.images import open_rgb

    open_rgb(path, what=what, max_pixels=limit).close()


def check_latent(path: str | Path) -> None:
    """A latent upload must be a tensor file ``torch.load(weights_only=True)`` reads
    (its shape is checked against the generator when the run starts)."""
    from soundguide.core.errors import LatentError

    path = Path(path)
    if path.suffix.lower() not in (".pt", ".pth"):
        raise LatentError(f"latent file {path.name}: expected a .pt tensor file")


# -- the page's state ---------------------------------------------------------------


@dataclass
class Source:
    """One guidance source on the page: ``kind`` is a guidance type; ``value`` the path
    (audio, image), the prompt (text) or the form's fields (any other type)."""

    kind: str
    value: Any
    weight: float = 1.0


@dataclass
class PageRun:
    """Everything the page says about one run."""

    sources: list[Source]
    generator: dict[str, Any]
    clip_model: str = "ViT-B/32"
    audio_encoder: str = "soundclip-resnet18-57"
    start: str = "seed"
    seed: int = 0
    latent: str | None = None
    photo: str | None = None
    inverter: str = "projection"
    regularizers: dict[str, float] = field(default_factory=dict)
    steps: int = 100
    lr: float = 0.1
    schedule: str = "cosine"
    paper: bool = False
    truncation: float = 0.7


def input_files(run: PageRun) -> list[tuple[str, Path]]:
    """The uploaded files a run reads, with the names they get in its ``inputs/`` folder."""
    found: list[tuple[str, Path]] = []
    for i, source in enumerate(run.sources):
        if source.kind in ("audio", "image") and source.value:
            found.append((f"{source.kind}-{i}{Path(source.value).suffix.lower()}", source.value))
    if run.start == "latent file" and run.latent:
        found.append(("start-latent" + Path(run.latent).suffix.lower(), run.latent))
    if run.start == "photo" and run.photo:
        found.append(("start-photo" + Path(run.photo).suffix.lower(), run.photo))
    return [(name, Path(path)) for name, path in found]


def copy_inputs(run: PageRun, folder: Path) -> PageRun:
    """``run`` with its uploads copied into ``folder`` (so its config outlives the upload
    folder, which is removed when the app exits)."""
    folder.mkdir(parents=True, exist_ok=True)
    moved = {str(path): folder / name for name, path in input_files(run)}
    for old, new in moved.items():
        shutil.copyfile(old, new)

    def where(value: Any) -> Any:
        return str(moved[str(value)].resolve()) if value and str(value) in moved else value

    sources = [
        Source(s.kind, where(s.value) if s.kind in ("audio", "image") else s.value, s.weight)
        for s in run.sources
    ]
    return dataclasses.replace(
        run, sources=sources, latent=where(run.latent), photo=where(run.photo)
    )


def run_data(run: PageRun, out: str | Path) -> dict[str, Any]:
    """The raw run config (the tables of a TOML file) of what the page holds."""
    guidance: list[dict[str, Any]] = []
    for source in run.sources:
        if source.kind == "text":
            entry: dict[str, Any] = {"type": "text", "prompt": source.value}
        elif source.kind == "audio":
            entry = {"type": "audio", "path": str(source.value), "encoder": run.audio_encoder}
        elif source.kind == "image":
            entry = {"type": "image", "path": str(source.value)}
        else:
            entry = {"type": source.kind, **(source.value or {})}
        if source.kind in BUILTIN_SOURCES:
            entry["clip_model"] = run.clip_model
        entry["weight"] = float(source.weight)
        guidance.append(entry)
    optimization: dict[str, Any] = {
        "steps": int(run.steps),
        "lr": float(run.lr),
        "schedule": run.schedule,
    }
    if run.paper:
        optimization["preset"] = "paper"
    if run.start == "mean latent":
        optimization["mode"] = "generate"
    else:
        optimization["mode"] = "edit"
        optimization["seed"] = int(run.seed)
        optimization["truncation"] = float(run.truncation)
    if run.start == "latent file":
        optimization["latent"] = str(run.latent) if run.latent else ""
    data: dict[str, Any] = {
        "generator": dict(run.generator),
        "guidance": guidance,
        "regularizer": [
            {"type": name, "weight": float(weight)}
            for name, weight in run.regularizers.items()
            if weight
        ],
        "optimization": optimization,
        "output": {"dir": str(out), "gif": True},
    }
    if run.start == "photo":
        optimization["image"] = str(run.photo) if run.photo else ""
        data["inversion"] = {"type": run.inverter}
    return data


def check_page(run: PageRun) -> None:
    """What only the page can get wrong (an empty slot), before the config's own checks."""
    if not run.sources:
        raise ConfigError("no guidance source: add a sound, a prompt or a picture")
    for i, source in enumerate(run.sources):
        if source.kind in ("audio", "image") and not source.value:
            raise ConfigError(f"source {i + 1} ({source.kind}): no file uploaded")
        if source.kind == "text" and not str(source.value or "").strip():
            raise ConfigError(f"source {i + 1} (text): the prompt is empty")
    if run.start == "latent file" and not run.latent:
        raise ConfigError("start: choose a latent file (.pt), or another start")
    if run.start == "photo" and not run.photo:
        raise ConfigError("start: upload a photo, or choose another start")
    if not 0 <= int(run.seed) <= MAX_APP_SEED:
        raise ConfigError(f"seed {run.seed} is out of range: the page takes 0 to 2**63 - 1")
    for source in run.sources:
        if source.kind == "audio":
            check_audio(source.value)
        elif source.kind == "image":
            check_image(source.value, what="reference image")
    if run.start == "photo":
        check_image(run.photo, what="photo")
    if run.start == "latent file":
        check_latent(run.latent)


def validate(data: dict[str, Any], registries: Registries) -> Any:
    """The :class:`~soundguide.core.config.RunConfig` of ``data``; the CLI's
    one-line :class:`ConfigError` when it is not valid (named ``page:``)."""
    return config_from_dict(data, registries, source="page")


def config_toml(data: dict[str, Any]) -> str:
    """``data`` as a TOML run config that ``soundguide edit`` runs exactly as the app ran it."""
    import tomli_w

    header = (
        "# soundguide run config written by `soundguide app`;\n"
        "# `soundguide edit THIS.toml` reproduces the run (same seeds, same outputs).\n"
    )
    return header + tomli_w.dumps(_toml_ready(data))


def _toml_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _toml_ready(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_toml_ready(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


# -- generators and plugin forms ----------------------------------------------------


def generator_choices(registries: Registries) -> dict[str, dict[str, Any]]:
    """Page label -> generator table: every ``preset`` a generator type offers, then a
    "local checkpoint" entry per type that takes a ``checkpoint`` file (and the bare
    type of a generator that has neither)."""
    choices: dict[str, dict[str, Any]] = {}
    for entry in registries.generators:
        fields = entry.config_model.model_fields
        preset = fields.get("preset")
        if preset is not None:
            for name in literal_values(preset.annotation):
                choices[f"{entry.name}: {name}"] = {"type": entry.name, "preset": name}
    for entry in registries.generators:
        fields = entry.config_model.model_fields
        if "checkpoint" in fields:
            choices[f"{entry.name}: local checkpoint"] = {"type": entry.name, "checkpoint": None}
        elif "preset" not in fields:
            choices[entry.name] = {"type": entry.name}  # a generator that needs no file
    return choices


def literal_values(annotation: Any) -> list[Any]:
    """The values of a ``Literal[...]`` annotation (also inside ``X | None``); [] otherwise."""
    if typing.get_origin(annotation) is typing.Literal:
        return list(typing.get_args(annotation))
    values: list[Any] = []
    for arg in typing.get_args(annotation):
        values.extend(literal_values(arg))
    return values


@dataclass
class FieldSpec:
    """One field of a plugin's pydantic ``Config`` as a form widget."""

    name: str
    widget: str
    """checkbox, integer, number, choice, text or toml (any other type, written as TOML)."""
    default: Any
    description: str
    required: bool
    choices: list[Any] = field(default_factory=list)


SKIPPED_FIELDS = ("type", "weight")


def field_specs(config_model: type) -> list[FieldSpec]:
    """The form of a plugin's ``Config``: its fields (but ``type`` and ``weight``), each
    with a widget for its type, its default and its description."""
    specs = []
    for name, info in config_model.model_fields.items():
        if name in SKIPPED_FIELDS:
            continue
        annotation = info.annotation
        required = info.is_required()
        default = None if info.default is PydanticUndefined else info.default
        if info.default_factory is not None:
            default = info.default_factory()
        choices = literal_values(annotation)
        args = set(typing.get_args(annotation)) - {type(None)} or {annotation}
        if choices:
            widget = "choice"
        elif args == {bool}:
            widget = "checkbox"
        elif args == {int}:
            widget = "integer"
        elif args <= {int, float}:
            widget = "number"
        elif args <= {str} or all(_is_path(a) for a in args):
            widget = "text"
        else:
            widget = "toml"
        if isinstance(default, Path):
            default = str(default)
        specs.append(FieldSpec(name, widget, default, info.description or "", required, choices))
    return specs


def _is_path(annotation: Any) -> bool:
    base = typing.get_args(annotation)[0] if typing.get_origin(annotation) else annotation
    return base is Path or base is str


def form_values(specs: list[FieldSpec], values: list[Any]) -> dict[str, Any]:
    """The table of a plugin source from its form's values: empty optional fields are
    left out (the default applies); ``toml`` fields are read as TOML values."""
    from soundguide.core.config import tomllib

    table: dict[str, Any] = {}
    for spec, value in zip(specs, values, strict=True):
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        if spec.widget == "toml":
            try:
                value = tomllib.loads(f"v = {value}")["v"]
            except tomllib.TOMLDecodeError:
                value = str(value)
        elif spec.widget == "integer":
            value = int(value)  # an optional one comes as text
        elif spec.widget == "number":
            value = float(value)
        table[spec.name] = value
    return table
