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
"""

from __future__ import annotations

import hashlib
import os
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
    "AudioEmbedder",
    "SoundCLIPEmbedder",
    "check_embedder",
    "describe_embedder",
    "embedder_from_guidance",
    "module_digest",
]


class SoundCLIPEmbedder:
    """The SoundCLIP front end + ResNet18 encoder on batches of clips.

    Clips of equal length share one front-end call; the encoder sees up to
    ``max_batch`` spectrograms at a time. Each clip is cut exactly as
    :func:`~soundguide.encoders.soundclip.embed_audio` cuts it one by one
    (its own dB reference, then a crop or zero padding), so the results agree
    with it up to float rounding.

    Args:
        encoder: a :class:`SoundCLIPEncoder`; its device and dtype are used.
        crop: ``"start"``, ``"center"`` (one 864-frame crop, the embedding as
            the encoder gives it) or ``"windows"`` (every window, the mean of
            their L2-normalized embeddings).
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
        hop_frames: int = NUM_FRAMES,
        weights_sha256: str | None = None,
        max_batch: int = 64,
    ) -> None:
        if crop not in EVAL_CROPS:
            raise ConfigError(
                f"unknown crop policy {crop!r} for evaluation; available: {', '.join(EVAL_CROPS)}"
            )
        if hop_frames < 1:
            raise ConfigError(f"hop_frames must be >= 1, got {hop_frames}")
        if max_batch < 1:
            raise ConfigError(f"max_batch must be >= 1, got {max_batch}")
        self.encoder = encoder.eval()
        param = next(encoder.parameters())
        self.frontend = SoundCLIPFrontend().to(param.device)
        self.crop = crop
        self.hop_frames = int(hop_frames)
        self.max_batch = int(max_batch)
        self.weights_sha256 = weights_sha256 or module_digest(encoder)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike[str],
        *,
        crop: str = "start",
        device: str | torch.device = "cpu",
        trust: bool = False,
        **options: Any,
    ) -> SoundCLIPEmbedder:
        """Load the encoder with :func:`load_soundclip` and wrap it (checksum: the file's sha256)."""
        path = Path(path).expanduser()
        encoder = load_soundclip(path, trust=trust).to(device)
        return cls(encoder, crop=crop, weights_sha256=sha256_file(path), **options)

    @property
    def identity(self) -> str:
        hop = f":hop={self.hop_frames}" if self.crop == "windows" else ""
        return f"soundclip-resnet18:sha256={self.weights_sha256}:crop={self.crop}{hop}"

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
    device: str | torch.device = "cpu",
    trust: bool = False,
    progress: bool = True,
) -> AudioEmbedder:
    """The audio embedder that the guidance plugin registered as ``guidance`` offers.

    Asks the class's :meth:`~soundguide.core.interfaces.Guidance.audio_embedder`
    (every guidance alike); ``encoder`` is a known-weights name (fetched through
    ``registries.weights``) or a checkpoint path.
    """
    from soundguide.core.interfaces import RunContext

    cls = registries.guidances.get(guidance)
    context = RunContext(
        device=torch.device(device),
        weights=registries.weights,
        trust_checkpoint=trust,
        progress=progress,
    )
    embedder = cls.audio_embedder(str(encoder), context, crop)
    if embedder is None:
        raise PluginError(
            f"guidance {guidance!r} cannot embed audio for evaluation",
            hint="its class needs a classmethod audio_embedder(encoder, context, crop) that "
            "returns an object with sample_rate, identity and embed_audio_batch(waves)",
        )
    return check_embedder(embedder)


def describe_embedder(embedder: AudioEmbedder) -> dict[str, Any]:
    """What the reports record about an embedder."""
    info: dict[str, Any] = {
        "class": f"{type(embedder).__module__}.{type(embedder).__qualname__}",
        "identity": embedder.identity,
        "sample_rate": int(embedder.sample_rate),
    }
    for name in ("crop", "weights_sha256"):
        if hasattr(embedder, name):
            info[name] = getattr(embedder, name)
    return info
