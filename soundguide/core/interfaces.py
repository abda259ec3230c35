"""The plugin kinds: what a generator, a guidance, a regularizer and an inverter provide.

A plugin class has a nested pydantic ``Config`` whose ``type: Literal[...]``
field names it in config files, and is built as ``cls(config, context)``.
The engine builds only what a run uses: a guidance or regularizer with
weight 0 is never constructed.

Optional interfaces: an :class:`ImageEncoder` may free memory in
``after_targets()``; a guidance whose target comes from an audio encoder may
offer that encoder to the evaluation (``soundguide zeroshot --guidance NAME``)
by overriding :meth:`Guidance.audio_embedder` to return an :class:`AudioEmbedder`.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Protocol, runtime_checkable

import torch
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo

if TYPE_CHECKING:
    from soundguide.core.checkpoints import WeightsRegistry
    from soundguide.core.inputs import Input


class StrictModel(BaseModel):
    """Base of every config model: unknown keys are errors, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    value = value.expanduser()
    base = (info.context or {}).get("base_dir")
    if base is not None and not value.is_absolute():
        value = Path(base) / value
    return value


ConfigPath = Annotated[Path, AfterValidator(_resolve_path)]
"""A path in a config: relative paths resolve against the config file's folder."""

MAX_SEED = 2**64 - 1
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
"""A random seed: what ``torch.Generator.manual_seed`` takes, 0 to 2**64 - 1."""

_FILE_SUFFIXES = {".pt", ".pth", ".ckpt", ".bin", ".pkl", ".safetensors", ".npz", ".tar"}


def _resolve_weights_ref(value: str, info: ValidationInfo) -> str:
    base = (info.context or {}).get("base_dir")
    path = Path(value).expanduser()
    if base is None or path.is_absolute():
        return str(path) if path.suffix.lower() in _FILE_SUFFIXES else value
    candidate = Path(base) / path
    if candidate.exists() or path.suffix.lower() in _FILE_SUFFIXES:
        return str(candidate)
    return value


WeightsRef = Annotated[str, AfterValidator(_resolve_weights_ref)]
"""A known-weights (or model) name, or a file path. Paths (an existing file next
to the config, or a name ending in .pt, .pth, ...) resolve against the config's folder."""


class PluginConfig(StrictModel):
    """Base of a plugin's nested ``Config``; subclasses narrow ``type`` to a Literal."""

    type: str

    def inputs(self, location: str) -> list[Input]:
        """What this plugin will read: checked (and known weights fetched) before a run.

        The default lists every path value (``ConfigPath``) as an input file and
        every ``WeightsRef`` field as weights; override it to add inputs the
        config implies (the ``stylegan2`` preset's weights). ``location`` is the
        config section, e.g. ``guidance.0``.
        """
        from soundguide.core.inputs import model_inputs

        return model_inputs(self, location)


class GeneratorConfig(PluginConfig):
    pass


class GuidanceConfig(PluginConfig):
    weight: float = Field(
        1.0,
        allow_inf_nan=False,
        description="Multiplies this source's loss; 0 turns it off, negative pushes away.",
    )


class RegularizerConfig(PluginConfig):
    weight: float = Field(
        1.0, ge=0, allow_inf_nan=False, description="Multiplies the penalty; 0 turns it off."
    )


class InverterConfig(PluginConfig):
    align: bool = Field(
        False,
        description="Align faces as FFHQ's are (eye and mouth landmarks; needs the 'align' "
        "extra); false, or a generator that does not make faces: resize and centre-crop.",
    )


class ModelStore:
    """Loaded networks kept for the next run of the same process (``soundguide app``).

    A run whose :class:`RunContext` has a store gets, from :meth:`RunContext.shared`,
    the network an earlier run loaded under the same key instead of reading the
    file again. Only frozen networks belong here, never per-run state (noise maps
    chosen for a photo, a random generator, a target): a plugin keeps those on
    itself. Without a store (the CLI, ``edit()``, ``Editor``) every run loads its
    own. Thread-safe; :meth:`clear` drops every network.
    """

    def __init__(self) -> None:
        import threading

        self._models: dict[tuple[Any, ...], Any] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple[Any, ...], build: Callable[[], Any]) -> Any:
        """The object kept under ``key``, else ``build()`` (kept for next time)."""
        with self._lock:
            if key not in self._models:
                self._models[key] = build()
            return self._models[key]

    def clear(self) -> None:
        with self._lock:
            self._models.clear()

    def __len__(self) -> int:
        return len(self._models)


def model_key(kind: str, path: str | os.PathLike[str], **settings: Any) -> tuple[Any, ...]:
    """A :class:`ModelStore` key: ``kind``, the file (resolved path, size and modification
    time, so a replaced file is read again) and whatever else the loaded network
    depends on (device, dtype, trust...)."""
    resolved = Path(path).expanduser().resolve()
    stat = resolved.stat()
    extra = tuple(sorted((k, str(v)) for k, v in settings.items()))
    return (kind, str(resolved), stat.st_size, stat.st_mtime_ns, *extra)


@dataclass
class RunContext:
    """What the engine hands every plugin it builds."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    weights: WeightsRegistry | None = None
    trust_checkpoint: bool = False
    cache_dir: Path | None = None
    batch_size: int = 1
    progress: bool = True
    photo: torch.Tensor | None = None
    """(n, 3, R, R) in [-1, 1]: the prepared photos of a run that starts from
    ``optimization.image`` (set before regularizers' ``setup``), else None."""
    extras: dict[str, Any] = field(default_factory=dict)
    models: ModelStore | None = None
    """Networks shared with other runs of this process (see :meth:`shared`); None: none."""

    def shared(self, key: tuple[Any, ...], build: Callable[[], Any]) -> Any:
        """``build()``, or, with a :attr:`models` store, the network an earlier run built
        under ``key`` (:func:`model_key`). For frozen networks only: what a run
        changes (noise maps, random generators) stays on the plugin."""
        return build() if self.models is None else self.models.get(key, build)

    def cache_path(self, *parts: str) -> Path:
        """A path under the cache folder (``$SOUNDGUIDE_HOME`` by default)."""
        from soundguide.core.checkpoints import soundguide_home

        base = self.cache_dir if self.cache_dir is not None else soundguide_home()
        return Path(base, *parts)

    def keyed_cache_path(self, kind: str, key: dict[str, Any]) -> Path:
        """``cache/<kind>/<hash of key>.pt``: where a result keyed by ``key`` is cached."""
        import hashlib
        import json

        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
        return self.cache_path(kind, f"{digest[:32]}.pt")

    def cached_tensor(
        self,
        kind: str,
        key: dict[str, Any],
        compute: Callable[[], torch.Tensor],
        *,
        shape: tuple[int, ...] | None = None,
    ) -> torch.Tensor:
        """``compute()``, cached on disk under ``cache/<kind>/`` by a hash of ``key``.

        ``key`` must name everything the result depends on (file sha256s,
        model and settings); ``shape`` is the result's expected shape. A cache
        file that cannot be read, or holds anything but a finite floating-point
        tensor of that shape, is recomputed (and replaced); a result that is not
        finite is returned but never cached.
        """
        from soundguide.core.files import atomic_write, os_reason

        path = self.keyed_cache_path(kind, key)
        if path.is_file():
            try:
                value = torch.load(path, weights_only=True, map_location="cpu")
            except Exception:
                value = None
            if _usable(value, shape):
                return value.to(self.device)
        value = compute()
        if _usable(value, shape):
            cpu = value.detach().to("cpu").clone()
            try:
                atomic_write(path, lambda fh: torch.save(cpu, fh))
            except OSError as exc:  # a cache that cannot be written only costs time
                import warnings

                warnings.warn(f"cannot write cache file {path}: {os_reason(exc)}", stacklevel=2)
        return value

    def resolve_weights(self, name_or_path: str | os.PathLike[str]) -> Path:
        """A local file: an existing path as given, else a known-weights name (downloaded)."""
        from soundguide.core.errors import WeightsError

        candidate = Path(name_or_path).expanduser()
        if candidate.exists():
            return candidate
        name = str(name_or_path)
        if self.weights is not None and name in self.weights:
            return self.weights.fetch(name, progress=self.progress)
        from soundguide.core.registry import unknown_name_message

        known = [e.name for e in self.weights] if self.weights else []
        raise WeightsError(
            unknown_name_message("weights name", name, known) + "; no such file either",
            hint="`soundguide weights list` shows the known names; relative paths resolve "
            "against the config's folder",
        )


def _usable(value: Any, shape: tuple[int, ...] | None) -> bool:
    return (
        isinstance(value, torch.Tensor)
        and value.is_floating_point()
        and (shape is None or tuple(value.shape) == tuple(shape))
        and bool(torch.isfinite(value).all())
    )


class Generator(abc.ABC):
    """Owns a latent space of shape (L, D) and makes images from it."""

    Config: ClassVar[type[GeneratorConfig]]
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    """Config defaults per run preset, e.g. ``{"paper": {"loss": "paper"}}``."""

    def __init__(self, config: GeneratorConfig, context: RunContext) -> None:
        self.config = config
        self.context = context

    @property
    @abc.abstractmethod
    def num_layers(self) -> int:
        """L: the number of latent vectors per image (W+ layers)."""

    @property
    @abc.abstractmethod
    def latent_dim(self) -> int:
        """D: the size of each latent vector."""

    @property
    @abc.abstractmethod
    def resolution(self) -> int:
        """Height and width of the synthesized images."""

    @abc.abstractmethod
    def mean_latent(self) -> torch.Tensor:
        """The average latent. Output: (1, L, D)."""

    @abc.abstractmethod
    def sample_latent(
        self, n: int, truncation: float, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Random latents truncated towards the mean. Output: (n, L, D)."""

    @abc.abstractmethod
    def synthesize(self, latent: torch.Tensor) -> torch.Tensor:
        """Input: (n, L, D). Output: (n, 3, H, W), roughly in [-1, 1].

        Deterministic (fixed noise) and differentiable with respect to ``latent``.
        """

    @property
    def content_box(self) -> tuple[int, int, int, int] | None:
        """(top, left, height, width) of the picture inside the square output, if smaller.

        LSUN cars, for example, are 512x384 inside 512x512. Saved images are
        cropped to it; guidance sees the full output.
        """
        return None

    @property
    def domain(self) -> str | None:
        """What the generator makes, when known: ``"face"`` (FFHQ), ``"landscape"``, ``"car"``...

        Photos are aligned as faces only for ``"face"`` or an unknown (None)
        domain, and inverters trained on one domain (e4e: faces) refuse others.
        """
        return None

    def files(self) -> list[Path]:
        """Checkpoint files this generator read (recorded with their sha256 in run.json)."""
        return []

    # -- optional: noise inputs (projection tunes them) --------------------------------
    def noise_maps(self) -> list[torch.Tensor]:
        """The noise inputs :meth:`synthesize` uses now, each (1 or n, 1, h, w).

        The default, ``[]``, says the generator has no noise inputs to tune
        (then :meth:`use_noise` is never called).
        """
        return []

    def use_noise(self, noise: Sequence[torch.Tensor] | None) -> None:
        """Make :meth:`synthesize` use ``noise`` instead of its fixed maps (None: the fixed ones).

        ``noise`` has one map per entry of :meth:`noise_maps`, each of the same
        shape except the batch (1, or the n of the latents it renders); maps
        may require grad, and gradients then reach them. A generator with noise
        maps must override this.
        """
        from soundguide.core.errors import PluginError

        raise PluginError(f"generator {type(self).__name__} has no noise inputs to set")


@runtime_checkable
class ImageEncoder(Protocol):
    """Maps generator images (n, 3, H, W) in [-1, 1] to embeddings (n, D).

    An encoder may also have ``after_targets()``: the engine calls it once
    every target is computed, so it can free what only targets needed (the
    CLIP encoder frees its text tower).
    """

    def encode_image(self, image: torch.Tensor) -> torch.Tensor: ...


EVAL_CROPS = ("start", "center", "windows")
"""Crop policies an evaluation asks an :class:`AudioEmbedder` for: deterministic ones only."""


@runtime_checkable
class AudioEmbedder(Protocol):
    """Mono waveforms -> embeddings: what the evaluation needs from an audio encoder.

    - ``sample_rate``: the rate of the waveforms it is handed (the evaluation
      resamples every clip to it);
    - ``identity``: names its weights *and* settings (crop policy, ...), so that
      two embedders with the same identity give the same embeddings; it is part
      of the embedding cache key;
    - ``embed_audio_batch(waves)``: N mono float32 waveforms ``(T_i,)`` of any
      lengths -> ``(N, D)`` float, on any device (need not be normalized; the
      evaluation L2-normalizes). The same wave always gives the same row.
    """

    sample_rate: int
    identity: str

    def embed_audio_batch(self, waves: list[torch.Tensor]) -> torch.Tensor: ...


class Guidance(abc.ABC):
    """A target in some embedding space and how far an image is from it."""

    Config: ClassVar[type[GuidanceConfig]]
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    """Config defaults per run preset, e.g. ``{"paper": {"loss": "paper"}}``."""

    def __init__(self, config: GuidanceConfig, context: RunContext) -> None:
        self.config = config
        self.context = context

    @property
    @abc.abstractmethod
    def space(self) -> str:
        """Key of the embedding space, e.g. ``"clip:ViT-B/32"``.

        Guidances with the same key share one encoder, built by the first of
        them, and the engine encodes the image once per space per step.
        """

    @abc.abstractmethod
    def build_encoder(self) -> ImageEncoder:
        """Build the image encoder of :attr:`space` (called once per space per run)."""

    @abc.abstractmethod
    def target(self, encoder: ImageEncoder) -> torch.Tensor:
        """The target embedding, computed once before the loop.

        Output: (D,) for one target, or (n, D) for one per batch item.
        """

    @property
    def num_items(self) -> int | None:
        """How many per-item targets this source gives (None: one for all items)."""
        return None

    def loss(self, embedding: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Input: (n, D) image embeddings and (n, D) targets. Output: (n,). Default 1 - cos."""
        from soundguide.core.losses import cosine_distance

        return cosine_distance(embedding, target)

    def files(self) -> list[Path]:
        """Input files this source read (recorded with their sha256 in run.json)."""
        return []

    @classmethod
    def audio_embedder(cls, encoder: str, context: RunContext, crop: str) -> AudioEmbedder | None:
        """Optional: this guidance's audio encoder, for ``soundguide zeroshot`` and ``probe``.

        ``encoder`` is what ``--encoder`` names (a known-weights name or a file:
        ``context.resolve_weights(encoder)`` gives the path), ``context`` gives
        the device and whether checkpoints are trusted, ``crop`` is one of
        :data:`EVAL_CROPS`. Return an :class:`AudioEmbedder`; the default, None,
        says that this guidance cannot embed audio.
        """
        return None


@dataclass
class Inversion:
    """Latents an :class:`Inverter` found for n images.

    ``latent``: (n, L, D) on the CPU. ``noise``: the tuned noise maps, one
    (n, 1, h, w) per entry of the generator's :meth:`Generator.noise_maps`, or
    None when the inverter kept the generator's own. ``history``: losses per
    step by name (each a list of n-item lists), for reports and tests.
    """

    latent: torch.Tensor
    noise: list[torch.Tensor] | None = None
    history: dict[str, list[list[float]]] = field(default_factory=dict)


class Inverter(abc.ABC):
    """Turns images into latents of a generator (e4e, projection...)."""

    Config: ClassVar[type[InverterConfig]]
    domains: ClassVar[tuple[str, ...] | None] = None
    """What the inverter was trained on, e.g. ``("face",)`` for e4e's FFHQ
    encoder; None: any generator."""

    def __init__(self, config: InverterConfig, context: RunContext) -> None:
        self.config = config
        self.context = context

    @abc.abstractmethod
    def invert(
        self,
        images: torch.Tensor,
        generator: Generator,
        *,
        start: Inversion | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> Inversion:
        """Latents of ``generator`` that render ``images``.

        Input: (n, 3, R, R) in [-1, 1] with R = ``generator.resolution``
        (already aligned or cropped), on the run's device. ``start``: an earlier
        inversion to refine (optimizers start there; encoders may ignore it).
        ``stop()`` true asks an iterative inverter to return what it has
        between two steps.
        """

    def identity(self) -> dict[str, Any]:
        """What the result depends on besides the images and the generator
        (settings and the sha256 of weights): part of the latent cache key and
        of ``invert.json``. The default is the config."""
        return self.config.model_dump(mode="json")

    def files(self) -> list[Path]:
        """Weights files this inverter read (recorded with their sha256)."""
        return []


class Regularizer(abc.ABC):
    """A penalty that keeps the edit close to its source."""

    Config: ClassVar[type[RegularizerConfig]]
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    """Config defaults per run preset, e.g. ``{"paper": {"loss": "paper"}}``."""
    needs_image: ClassVar[bool] = False
    """True when :meth:`loss` uses the images (the engine passes None otherwise)."""
    per_item: ClassVar[bool] = True
    """True when item i's penalty depends on item i alone: then each batch item follows
    the path it would follow alone. False for a sequence regularizer, whose terms couple
    items (``temporal``: neighbouring video frames); it still returns (n,) values."""

    def __init__(self, config: RegularizerConfig, context: RunContext) -> None:
        self.config = config
        self.context = context

    def set_context(self, before: torch.Tensor | None) -> None:  # noqa: B027
        """Sequence regularizers only: fixed latents that precede item 0 (the overlap of a
        video's previous chunk), or None; called after :meth:`setup`. ``before`` is
        (k, L, D), or (S, k, L, D): those latents at each step s of their own run (row s
        for step s, the last row once the steps run out)."""

    def setup(self, w0: torch.Tensor, image0: torch.Tensor | None) -> None:  # noqa: B027
        """Called once before the loop with the source latent (n, L, D) and image."""

    @abc.abstractmethod
    def loss(
        self,
        w: torch.Tensor,
        w0: torch.Tensor,
        image: torch.Tensor | None,
        image0: torch.Tensor | None,
    ) -> torch.Tensor:
        """Unweighted penalty per batch item. Output: (n,)."""

    def after_step(self, w: torch.Tensor, w0: torch.Tensor) -> None:  # noqa: B027
        """Called after every optimizer update (adaptive schedules live here)."""

    def files(self) -> list[Path]:
        return []
