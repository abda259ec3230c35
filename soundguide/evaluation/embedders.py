"""Audio embedders for the evaluation: how one is found, and the built-in SoundCLIP one.

An audio embedder is any :class:`~soundguide.core.interfaces.AudioEmbedder`
(``sample_rate``, ``identity``, ``embed_audio_batch(waves) -> (N, D)``; the
contract is declared in :mod:`soundguide.core.interfaces`). ``soundguide
zeroshot --guidance NAME`` asks the guidance plugin registered as ``NAME`` for
one through :meth:`~soundguide.core.interfaces.Guidance.audio_embedder`; every
guidance is asked the same way, the built-in ``audio`` one (which answers with
:class:`SoundCLIPEmbedder`) included. A third-party guidance offers its encoder
with::

    class MyAudioGuidance(soundguide.Guidance):
        ...
        @classmethod
        def audio_embedder(cls, encoder: str, context: soundguide.RunContext, crop: str):
            path = context.resolve_weights(encoder)    # a known-weights name or a file
            return MyEmbedder(path, device=context.device)

and from Python any such object can be passed to :func:`~soundguide.evaluation.zero_shot`.

Where the encoder sits clips on a fixed canvas, as SoundCLIP does, its
``audio_embedder`` may also take the keyword arguments ``pad`` (one of
:data:`EVAL_PADS`) and ``db_reference`` (one of :data:`EVAL_DB_REFERENCES`);
they are passed only to a method that names them (or takes ``**kwargs``). A
plugin without them is asked without them, with a warning when the
evaluation protocol asked for other values than the defaults.

The reports say whether the weights evaluated are random or tiny ones (the
demo's files, the tests'), by a documented rule (:func:`soundclip_weights_check`,
:func:`clip_weights_check`): a shape no released model has, or normalization
layers still at their initial values (never trained).
"""

from __future__ import annotations

import hashlib
import inspect
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from soundguide.core.errors import AudioError, ConfigError, PluginError
from soundguide.core.files import sha256_file
from soundguide.core.interfaces import EVAL_CROPS, AudioEmbedder
from soundguide.encoders.soundclip import (
    NUM_FRAMES,
    SAMPLE_RATE,
    SoundCLIPEncoder,
    SoundCLIPFrontend,
    load_soundclip,
)

__all__ = [
    "EVAL_CROPS",
    "EVAL_DB_REFERENCES",
    "EVAL_PADS",
    "RELEASED_CLIP_SHAPES",
    "AudioEmbedder",
    "SoundCLIPEmbedder",
    "check_embedder",
    "clip_weights_check",
    "describe_clip_file",
    "describe_embedder",
    "embedder_from_guidance",
    "module_digest",
    "soundclip_weights_check",
]

EVAL_PADS = ("end", "center")
"""Pad policies an evaluation asks for (deterministic ones): see
:data:`~soundguide.encoders.soundclip.PadPolicy`."""

EVAL_DB_REFERENCES = ("window", "clip")
"""dB references an evaluation may ask for: see
:data:`~soundguide.encoders.soundclip.DbReference`."""


class SoundCLIPEmbedder:
    """The SoundCLIP front end + ResNet18 encoder on batches of clips.

    Clips of equal length share one front-end call; the encoder sees up to
    ``max_batch`` spectrograms at a time. Each clip is cut exactly as
    :func:`~soundguide.encoders.soundclip.embed_audio` cuts it one by one
    (its own dB reference, then a crop or zero padding), so the results agree
    with it up to float rounding; ``db_reference="clip"`` (the whole clip's
    loudest bin, which ``embed_audio`` never uses) changes clips longer than
    864 frames only.

    Args:
        encoder: a :class:`SoundCLIPEncoder`; its device and dtype are used.
        crop: ``"start"``, ``"center"`` (one 864-frame crop, the embedding as
            the encoder gives it) or ``"windows"`` (every window, the mean of
            their L2-normalized embeddings).
        pad: where a clip shorter than 864 frames sits on the zero canvas:
            ``"end"`` or ``"center"`` (see :data:`EVAL_PADS`).
        db_reference: ``"window"`` or ``"clip"`` (whose loudest bin is 0 dB
            for a clip longer than 864 frames; see :data:`EVAL_DB_REFERENCES`).
        hop_frames: hop between windows for ``crop="windows"``.
        weights_sha256: checksum of the checkpoint file, for :attr:`identity`;
            when None the parameters themselves are hashed.
        max_batch: spectrograms per encoder call.

    ``embed_audio_batch``: N waveforms (T_i,) at 44.1 kHz -> (N, D) float32.
    """

    sample_rate = SAMPLE_RATE

    def __init__(
        self,
        encoder: SoundCLIPEncoder,
        *,
        crop: str = "start",
        pad: str = "end",
        db_reference: str = "window",
        hop_frames: int = NUM_FRAMES,
        weights_sha256: str | None = None,
        max_batch: int = 64,
    ) -> None:
        if crop not in EVAL_CROPS:
            raise ConfigError(
                f"unknown crop policy {crop!r} for evaluation; available: {', '.join(EVAL_CROPS)}"
            )
        if pad not in EVAL_PADS:
            raise ConfigError(
                f"unknown pad policy {pad!r} for evaluation; available: {', '.join(EVAL_PADS)}"
            )
        if db_reference not in EVAL_DB_REFERENCES:
            raise ConfigError(
                f"unknown dB reference {db_reference!r}; available: {', '.join(EVAL_DB_REFERENCES)}"
            )
        if hop_frames < 1:
            raise ConfigError(f"hop_frames must be >= 1, got {hop_frames}")
        if max_batch < 1:
            raise ConfigError(f"max_batch must be >= 1, got {max_batch}")
        self.encoder = encoder.eval()
        param = next(encoder.parameters())
        self.frontend = SoundCLIPFrontend(pad=pad, db_reference=db_reference).to(param.device)
        self.crop = crop
        self.pad = pad
        self.db_reference = db_reference
        self.hop_frames = int(hop_frames)
        self.max_batch = int(max_batch)
        self.weights_sha256 = weights_sha256 or module_digest(encoder)
        self.weights_check = soundclip_weights_check(encoder)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike[str],
        *,
        crop: str = "start",
        pad: str = "end",
        db_reference: str = "window",
        device: str | torch.device = "cpu",
        trust: bool = False,
        **options: Any,
    ) -> SoundCLIPEmbedder:
        """Load the encoder with :func:`load_soundclip` and wrap it (checksum: the file's sha256)."""
        path = Path(path).expanduser()
        encoder = load_soundclip(path, trust=trust).to(device)
        return cls(
            encoder,
            crop=crop,
            pad=pad,
            db_reference=db_reference,
            weights_sha256=sha256_file(path),
            **options,
        )

    @property
    def identity(self) -> str:
        """Weights and every setting the embeddings depend on (part of the cache key)."""
        hop = f":hop={self.hop_frames}" if self.crop == "windows" else ""
        return (
            f"soundclip-resnet18:sha256={self.weights_sha256}:crop={self.crop}"
            f":pad={self.pad}:db={self.db_reference}{hop}"
        )

    @torch.no_grad()
    def embed_audio_batch(self, waves: list[torch.Tensor]) -> torch.Tensor:
        if not waves:
            raise AudioError("no waveforms to embed")
        param = next(self.encoder.parameters())
        groups: dict[int, list[int]] = {}
        for i, wave in enumerate(waves):
            if not isinstance(wave, torch.Tensor) or wave.dim() != 1 or wave.numel() == 0:
                got = tuple(wave.shape) if isinstance(wave, torch.Tensor) else type(wave).__name__
                raise AudioError(f"waveform {i} must be a non-empty mono tensor (T,), got {got}")
            groups.setdefault(wave.shape[0], []).append(i)
        inputs: list[torch.Tensor | None] = [None] * len(waves)
        for indices in groups.values():
            batch = torch.stack([waves[i] for i in indices]).to(param.device, torch.float32)
            if self.crop == "windows":
                specs = self.frontend.windows(batch, hop_frames=self.hop_frames)
            else:
                specs = self.frontend(batch, crop=self.crop).unsqueeze(1)
            for j, i in enumerate(indices):
                inputs[i] = specs[j]  # (W, 1, 128, 512)
        counts = [x.shape[0] for x in inputs]  # type: ignore[union-attr]
        flat = torch.cat(inputs)  # type: ignore[arg-type]
        embeddings = torch.cat(
            [self.encoder(chunk.to(param.dtype)) for chunk in flat.split(self.max_batch)]
        ).float()
        if self.crop != "windows":
            return embeddings
        normalized = F.normalize(embeddings, dim=-1)
        return torch.stack([part.mean(dim=0) for part in normalized.split(counts)])


def module_digest(module: torch.nn.Module) -> str:
    """sha256 over a module's state dict (names, shapes, dtypes and values)."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        value = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}:{tuple(value.shape)}:{value.dtype}\n".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def check_embedder(embedder: object) -> AudioEmbedder:
    """Return ``embedder`` if it fulfils :class:`AudioEmbedder`, else raise :class:`PluginError`."""
    missing = [
        name
        for name in ("sample_rate", "identity", "embed_audio_batch")
        if not hasattr(embedder, name)
    ]
    if missing or not callable(getattr(embedder, "embed_audio_batch", None)):
        raise PluginError(
            f"{type(embedder).__name__} is not an audio embedder: it lacks "
            f"{', '.join(missing) or 'a callable embed_audio_batch'}",
            hint="an audio embedder has sample_rate, identity and embed_audio_batch(waves)",
        )
    return embedder  # type: ignore[return-value]


def embedder_from_guidance(
    registries: Any,
    guidance: str,
    encoder: str | os.PathLike[str],
    *,
    crop: str = "start",
    pad: str = "end",
    db_reference: str = "window",
    device: str | torch.device = "cpu",
    trust: bool = False,
    progress: bool = True,
) -> AudioEmbedder:
    """The audio embedder that the guidance plugin registered as ``guidance`` offers.

    Asks the class's :meth:`~soundguide.core.interfaces.Guidance.audio_embedder`
    (every guidance alike); ``encoder`` is a known-weights name (fetched through
    ``registries.weights``) or a checkpoint path. ``pad`` and ``db_reference``
    are passed to a method that takes them (see the module docstring); one
    that does not is asked without them, with a warning when they are not the
    defaults.
    """
    from soundguide.core.interfaces import RunContext

    cls = registries.guidances.get(guidance)
    context = RunContext(
        device=torch.device(device),
        weights=registries.weights,
        trust_checkpoint=trust,
        progress=progress,
    )
    wanted = {"pad": pad, "db_reference": db_reference}
    taken = _keywords(cls.audio_embedder, wanted)
    ignored = [f"{k}={v}" for k, v in wanted.items() if k not in taken and v != _DEFAULTS[k]]
    if ignored:
        warnings.warn(
            f"guidance {guidance!r}'s audio embedder takes no {', '.join(ignored)} setting; "
            "it embeds clips its own way",
            stacklevel=2,
        )
    embedder = cls.audio_embedder(str(encoder), context, crop, **taken)
    if embedder is None:
        raise PluginError(
            f"guidance {guidance!r} cannot embed audio for evaluation",
            hint="its class needs a classmethod audio_embedder(encoder, context, crop) that "
            "returns an object with sample_rate, identity and embed_audio_batch(waves)",
        )
    return check_embedder(embedder)


_DEFAULTS = {"pad": "end", "db_reference": "window"}


def _keywords(method: Any, wanted: Mapping[str, str]) -> dict[str, str]:
    """The entries of ``wanted`` that ``method`` accepts as keyword arguments."""
    try:
        params = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):
        return {}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return dict(wanted)
    names = {
        p.name
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    return {k: v for k, v in wanted.items() if k in names}


def describe_embedder(embedder: AudioEmbedder) -> dict[str, Any]:
    """What the reports record about an embedder.

    ``crop``, ``pad``, ``db_reference``, ``weights_sha256`` and
    ``weights_check`` (see :func:`soundclip_weights_check`) when the embedder
    has them (the built-in one does).
    """
    info: dict[str, Any] = {
        "class": f"{type(embedder).__module__}.{type(embedder).__qualname__}",
        "identity": embedder.identity,
        "sample_rate": int(embedder.sample_rate),
    }
    for name in ("crop", "pad", "db_reference", "weights_sha256", "weights_check"):
        if hasattr(embedder, name):
            info[name] = getattr(embedder, name)
    return info


# -- random or tiny weights -------------------------------------------------------------
#
# The rule, also in the README: weights are "random or tiny" when their shape is
# not one a released model has (the demo's and the tests' files: embedding sizes
# 64 and 32), or when every normalization layer still holds its initial values
# (batch-norm running mean 0 and variance 1, layer-norm weight 1 and bias 0),
# which no trained network keeps: a random full-size network made for a
# benchmark. Released files are also recognized by their sha256 where one is
# published (OpenAI's CLIP files).

RELEASED_SOUNDCLIP_EMBED_DIM = 512
"""The released SoundCLIP encoder's output size (ResNet18 is fixed by the keys otherwise)."""

RELEASED_CLIP_SHAPES: dict[
    str, tuple[int, int, int | tuple[int, ...], int, int | None, int, int]
] = {
    "RN50": (1024, 224, (3, 4, 6, 3), 64, None, 512, 12),
    "RN101": (512, 224, (3, 4, 23, 3), 64, None, 512, 12),
    "RN50x4": (640, 288, (4, 6, 10, 6), 80, None, 640, 12),
    "RN50x16": (768, 384, (6, 8, 18, 8), 96, None, 768, 12),
    "RN50x64": (1024, 448, (3, 15, 36, 10), 128, None, 1024, 12),
    "ViT-B/32": (512, 224, 12, 768, 32, 512, 12),
    "ViT-B/16": (512, 224, 12, 768, 16, 512, 12),
    "ViT-L/14": (768, 224, 24, 1024, 14, 768, 12),
    "ViT-L/14@336px": (768, 336, 24, 1024, 14, 768, 12),
}
"""OpenAI's released CLIP models: (embed_dim, image_resolution, vision_layers,
vision_width, vision_patch_size, transformer_width, transformer_layers), as
:func:`~soundguide.encoders.clip.clip_config` reads them off a state dict."""


def _initial_normalization(module: torch.nn.Module) -> bool:
    """Whether every normalization layer of ``module`` holds its initial values (and it has one)."""
    norms = [
        m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d | torch.nn.LayerNorm)
    ]
    if not norms or any(t.is_meta for m in norms for t in m.state_dict().values()):
        return False  # nothing to tell by, or no values (a model on the meta device)
    for m in norms:
        if isinstance(m, torch.nn.BatchNorm2d) and m.running_mean is not None:
            if bool(m.running_mean.any()) or not bool((m.running_var == 1).all()):
                return False
        elif isinstance(m, torch.nn.LayerNorm) and m.weight is not None:
            if not bool((m.weight == 1).all()) or bool(m.bias.any()):
                return False
    return True


def soundclip_weights_check(encoder: SoundCLIPEncoder) -> dict[str, Any]:
    """Whether a SoundCLIP encoder is a random or tiny one (the rule above).

    Output: ``{"random_or_tiny": bool, "why": str | None}``.
    """
    dim = getattr(encoder, "embed_dim", None)
    if dim is not None and int(dim) != RELEASED_SOUNDCLIP_EMBED_DIM:
        why = (
            f"its embedding size {dim} is not the released encoder's "
            f"{RELEASED_SOUNDCLIP_EMBED_DIM}: a tiny model"
        )
        return {"random_or_tiny": True, "why": why}
    if _initial_normalization(encoder):
        why = "its batch-norm statistics are at their initial values: never trained (random)"
        return {"random_or_tiny": True, "why": why}
    return {"random_or_tiny": False, "why": None}


def clip_weights_check(model: torch.nn.Module, sha256: str | None = None) -> dict[str, Any]:
    """Whether a CLIP model is a released one, or a random or tiny one (the rule above).

    A file whose ``sha256`` is one OpenAI published is that release. Otherwise
    the shapes are compared with :data:`RELEASED_CLIP_SHAPES`.
    Output: ``{"released": name | None, "shape_of": name | None,
    "random_or_tiny": bool, "why": str | None}``.
    """
    from soundguide.encoders.clip import clip_config
    from soundguide.encoders.clip_weights import CLIP_MODELS

    for name, entry in CLIP_MODELS.items():
        if sha256 is not None and entry.split("/")[0] == sha256:
            return {"released": name, "shape_of": name, "random_or_tiny": False, "why": None}
    try:
        config = clip_config(model.state_dict())
    except (KeyError, IndexError, AttributeError):
        config = None
    shape = None
    if config is not None:
        layers = config["vision_layers"]
        key = (
            config["embed_dim"],
            config["image_resolution"],
            tuple(layers) if isinstance(layers, list | tuple) else layers,
            config["vision_width"],
            config["vision_patch_size"],
            config["transformer_width"],
            config["transformer_layers"],
        )
        shape = next((n for n, s in RELEASED_CLIP_SHAPES.items() if s == key), None)
    if shape is None:
        sizes = (
            f"embedding {config['embed_dim']}, vision width {config['vision_width']}, "
            f"text width {config['transformer_width']}"
            if config is not None
            else "unreadable sizes"
        )
        why = f"its shape ({sizes}) is not a released CLIP model's: a tiny or custom model"
        return {"released": None, "shape_of": None, "random_or_tiny": True, "why": why}
    if _initial_normalization(model):
        why = "its layer norms are at their initial values: never trained (random)"
        return {"released": None, "shape_of": shape, "random_or_tiny": True, "why": why}
    return {"released": None, "shape_of": shape, "random_or_tiny": False, "why": None}


def describe_clip_file(
    name: str | os.PathLike[str], path: str | os.PathLike[str], model: torch.nn.Module
) -> dict[str, Any]:
    """What the zero-shot report records about the CLIP model of the class prompts:
    the name asked for, the file, its sha256 and :func:`clip_weights_check`."""
    from soundguide.encoders.clip_weights import CLIP_MODELS

    name = os.fspath(name)
    path = Path(path)
    entry = CLIP_MODELS.get(name)
    if entry is not None and path != Path(name).expanduser():
        digest = entry.split("/")[0]  # a download by name is checked against it when fetched
    else:
        digest = sha256_file(path)
    return {
        "name": name,
        "file": str(path.resolve()),
        "sha256": digest,
        **clip_weights_check(model, digest),
    }
