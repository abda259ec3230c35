"""Inverters ``projection`` and ``e4e+projection``: latents found by optimization.

``projection`` is rosinality's ``projector.py`` recipe (see
:mod:`soundguide.inversion.projection`) for any generator: from the mean W,
Adam on the latent and the generator's noise maps against LPIPS (VGG16), 1000
steps by default. ``e4e+projection`` starts from e4e's code instead and runs
a short projection (200 steps) that also tunes the noise: closer to the photo
than e4e alone, at a fifth of projection's cost.

LPIPS needs torchvision's VGG16 weights (``vgg16-lpips``, 528 MB), fetched on
first use like every known weights file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

import soundguide
from soundguide import Inversion, Inverter, InverterConfig, Seed, WeightsRef


class ProjectionOptions(InverterConfig):
    """The settings of rosinality's projector (its defaults, 1000 steps)."""

    steps: int = Field(1000, ge=0, le=100_000, description="Optimization steps.")
    lr: float = Field(0.1, gt=0, allow_inf_nan=False, description="Peak learning rate of Adam.")
    w_plus: bool = Field(
        False, description="One latent per layer (W+) instead of one W for all layers."
    )
    noise_regularize: float = Field(
        1e5, ge=0, allow_inf_nan=False, description="Weight of the noise maps' regularization."
    )
    mse: float = Field(0.0, ge=0, allow_inf_nan=False, description="Weight of the pixel MSE.")
    latent_noise: float = Field(
        0.05, ge=0, allow_inf_nan=False, description="Latent noise early on, in latent stds."
    )
    noise_ramp: float = Field(
        0.75, gt=0, le=1, description="Fraction of the run over which the latent noise fades."
    )
    mean_samples: int = Field(10_000, ge=1, description="Mapping samples for the mean W.")
    seed: Seed = Field(0, description="Seed of the mean-W samples, noise maps and latent noise.")
    lpips: WeightsRef = Field(
        "vgg16-lpips",
        description="VGG16 weights of LPIPS: a known-weights name or torchvision's "
        "vgg16-397923af.pth.",
    )


class Projection(Inverter):
    class Config(ProjectionOptions):
        type: Literal["projection"] = "projection"

    config: Config

    def __init__(self, config: ProjectionOptions, context) -> None:
        super().__init__(config, context)
        from soundguide.inversion.lpips import load_lpips

        self.lpips_path = Path(context.resolve_weights(config.lpips))
        self.lpips = load_lpips(self.lpips_path, context.device)

    def lpips_distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """LPIPS of two image batches (n, 3, H, W) in [-1, 1] as the loss sees them -> (n,)."""
        from soundguide.inversion.projection import pool_to

        device = self.context.device
        return self.lpips(pool_to(a.to(device)), pool_to(b.to(device)))

    def settings(self, steps: int | None = None):
        from soundguide.inversion.projection import ProjectionSettings

        c = self.config
        return ProjectionSettings(
            steps=c.steps if steps is None else steps,
            lr=c.lr,
            noise=c.latent_noise,
            noise_ramp=c.noise_ramp,
            noise_regularize=c.noise_regularize,
            mse=c.mse,
            w_plus=c.w_plus,
            mean_samples=c.mean_samples,
        )

    def invert(self, images, generator, *, start=None, stop=None) -> Inversion:
        from soundguide.inversion.projection import project

        return project(
            images.to(self.context.device),
            generator,
            self.lpips,
            settings=self.settings(),
            start=start,
            stop=stop,
            progress=self.context.progress,
            seed=self.config.seed,
        )

    def files(self) -> list[Path]:
        return [self.lpips_path]


class E4EProjection(Projection):
    """e4e's code, then a short projection from it that also tunes the noise maps."""

    class Config(ProjectionOptions):
        type: Literal["e4e+projection"] = "e4e+projection"
        steps: int = Field(200, ge=0, le=100_000, description="Projection steps after e4e.")
        w_plus: bool = Field(True, description="Refine e4e's W+ code per layer (false: one W).")
        e4e: WeightsRef = Field(
            "e4e-ffhq-encode",
            description="e4e encoder: a known-weights name or an e4e checkpoint file.",
        )

    config: Config
    domains = ("face",)

    def __init__(self, config: Config, context) -> None:
        from soundguide.plugins.e4e import E4E

        self.encoder = E4E(E4E.Config(weights=config.e4e), context)
        super().__init__(config, context)

    def invert(self, images, generator, *, start=None, stop=None) -> Inversion:
        if start is None:
            start = self.encoder.invert(images, generator)
        return super().invert(images, generator, start=start, stop=stop)

    def files(self) -> list[Path]:
        return [*self.encoder.files(), *super().files()]


@soundguide.hookimpl
def register_inverters(registry):
    registry.add(Projection)
    registry.add(E4EProjection)


@soundguide.hookimpl
def register_weights(registry):
    from soundguide.inversion.lpips import VGG16_WEIGHTS

    registry.add(VGG16_WEIGHTS)
