"""Audio encoders the trainer can build, and the export that the ``audio`` guidance loads.

``resnet18`` is :class:`~soundguide.encoders.soundclip.SoundCLIPEncoder`, the
paper's architecture; its export has exactly the keys of ``resnet18_57.pth``
and loads with :func:`~soundguide.encoders.soundclip.load_soundclip`.
``tiny`` is a small convolutional net with batch norm, for tests and smoke
runs on a CPU; it is not loadable as SoundCLIP.

The trainer accepts any ``nn.Module`` mapping (B, 1, 128, 512) to (B, D).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from soundguide.core.errors import ConfigError
from soundguide.core.files import atomic_write
from soundguide.encoders.soundclip import INPUT_SHAPE, SoundCLIPEncoder


class TinyAudioEncoder(nn.Module):
    """A small conv net on the SoundCLIP input, for tests and smoke runs.

    Input: (B, 1, 128, 512). Output: (B, embed_dim).

    Pools 4 x 8 first (rows of the input hold 4 mel bands x 128 frames each, so
    8-wide pooling stays within one band), batch norm of that input, two
    convolutions, and an average over time that keeps 8 frequency regions. Batch norm sits on the input because its statistics do not
    drift with the weights: deeper in such a small net, on inputs that are
    mostly padding, features have tiny variances and eval mode amplifies any lag
    of the running statistics. They are cumulative averages (``momentum=None``)
    so that they are usable after the few steps of a smoke run.
    """

    def __init__(self, embed_dim: int = 512, width: int = 16) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d((4, 8))
        self.features = nn.Sequential(
            nn.BatchNorm2d(1, momentum=None),
            nn.Conv2d(1, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d((8, 1)),  # keep 8 frequency regions, average over time
        )
        self.fc = nn.Linear(8 * 2 * width, embed_dim)
        self.embed_dim = embed_dim

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(self.pool(spec)).flatten(1))


ARCHITECTURES: dict[str, Callable[[int], nn.Module]] = {
    "resnet18": lambda dim: SoundCLIPEncoder(embed_dim=dim),
    "tiny": lambda dim: TinyAudioEncoder(embed_dim=dim),
}


def build_encoder(arch: str, embed_dim: int) -> nn.Module:
    """A freshly initialized encoder of architecture ``arch`` (see :data:`ARCHITECTURES`)."""
    if arch not in ARCHITECTURES:
        raise ConfigError(
            f"unknown audio encoder architecture {arch!r}; available: {', '.join(ARCHITECTURES)}"
        )
    return ARCHITECTURES[arch](int(embed_dim))


def check_encoder(encoder: nn.Module, embed_dim: int, device: torch.device) -> None:
    """One forward of two zero inputs must give (2, embed_dim); else :class:`ConfigError`."""
    was_training = encoder.training
    encoder.eval()
    with torch.no_grad():
        out = encoder(torch.zeros(2, *INPUT_SHAPE, device=device))
    encoder.train(was_training)
    if tuple(out.shape) != (2, embed_dim):
        raise ConfigError(
            f"the audio encoder maps (2, 1, 128, 512) to {tuple(out.shape)}; "
            f"CLIP's embeddings need (2, {embed_dim})"
        )


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / DataParallel wrappers."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return model


def encoder_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The encoder's weights as plain CPU tensors (``module.`` wrappers removed)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in unwrap(model).state_dict().items()}


def export_encoder(model: nn.Module, path: str | os.PathLike[str]) -> Path:
    """Write the encoder's plain state dict (atomically) for the ``audio`` guidance.

    For ``resnet18`` the keys are those of ``resnet18_57.pth`` (``conv.*``,
    ``feature_extractor.*``): ``load_soundclip(path)`` and
    ``torch.load(path, weights_only=True)`` both read it.
    """
    state = encoder_state_dict(model)
    return atomic_write(path, lambda fh: torch.save(state, fh))
