"""A toy time-resolved audio source for the video tests: SoundCLIP's front end and the real
slicing, windows and smoothing, but a toy "encoder" that maps a tone to target A and noise
to target B (mixed by the share of noisy columns in a window), in the toy image space of
:mod:`tests.toy_plugins`. Usable with ``-p tests.video.toy_audio``."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

import soundguide
from soundguide.plugins.audio import AudioGuidance
from tests.toy_plugins import ToyEncoder

DIM = 16


def toy_targets() -> tuple[torch.Tensor, torch.Tensor]:
    """Targets A (tone) and B (noise): two orthogonal unit vectors of the toy space."""
    g = torch.Generator().manual_seed(7)
    q, _ = torch.linalg.qr(torch.randn(DIM, 2, generator=g))
    return q[:, 0], q[:, 1]


def noisy_share(spec: torch.Tensor) -> torch.Tensor:
    """(B, 1, 128, 512) encoder inputs -> (B,): the share of noisy columns among the sounding ones.

    The input is the original code's plain reshape of a (512 mel rows, 128 time
    columns) picture, so it is read back as that. A tone lights few mel bands,
    noise most; the zero padding of a short window sounds nowhere and is left out.
    """
    picture = spec.reshape(-1, 512, 128)
    lit = (picture > 0.6).float().mean(dim=1)  # (B, 128 columns)
    sounding = picture.amax(dim=1) > 0.05
    noisy = (lit > 0.3) & sounding
    return noisy.sum(-1).float() / sounding.sum(-1).clamp(min=1).float()


class ToyAudioGuidance(AudioGuidance):
    class Config(AudioGuidance.Config):
        type: Literal["toy-audio"] = "toy-audio"
        dim: int = Field(DIM, ge=1)

    @property
    def space(self) -> str:
        return "toy:audio"

    def build_encoder(self):
        return ToyEncoder(DIM, seed=sum(map(ord, self.space)))

    def frame_encoder(self, weights):
        a, b = toy_targets()

        def encode(spec: torch.Tensor) -> torch.Tensor:
            share = noisy_share(spec)[:, None]
            return (1 - share) * a + share * b

        return encode

    def files(self):
        return list(self.paths)


@soundguide.hookimpl
def register_guidances(registry):
    registry.add(ToyAudioGuidance)
