"""Inverter ``e4e``: encoder4editing (Tov et al., 2021), one forward pass per photo.

The released ``e4e_ffhq_encode.pt`` was trained on aligned FFHQ faces for the
1024 px FFHQ StyleGAN2 (18 W+ layers of 512): use it with ``align = true``
and the ``ffhq`` generator. It returns latents only (the generator keeps its
own noise). Fast (a fraction of a second) and easy to edit, but less exact
than projection: ``e4e+projection`` refines its code.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

import torch
from pydantic import Field

import soundguide
from soundguide import Inversion, Inverter, InverterConfig, WeightsRef


class E4E(Inverter):
    class Config(InverterConfig):
        type: Literal["e4e"] = "e4e"
        weights: WeightsRef = Field(
            "e4e-ffhq-encode",
            description="e4e encoder: a known-weights name or an e4e checkpoint file "
            "(e4e_ffhq_encode.pt: aligned FFHQ faces, the 1024 px FFHQ generator).",
        )

    config: Config
    domains: ClassVar[tuple[str, ...] | None] = ("face",)

    def __init__(self, config: Config, context) -> None:
        super().__init__(config, context)
        from soundguide.encoders.e4e import load_e4e

        self.path = Path(context.resolve_weights(config.weights))
        self.encoder = load_e4e(self.path, trust=context.trust_checkpoint).to(context.device)

    def invert(self, images, generator, *, start=None, stop=None) -> Inversion:
        from soundguide.core.errors import ConfigError
        from soundguide.encoders.e4e import e4e_input

        shape = (self.encoder.n_styles, int(self.encoder.latent_avg.shape[-1]))
        if shape != (generator.num_layers, generator.latent_dim):
            raise ConfigError(
                f"the e4e encoder {self.path.name} makes {shape[0]} latents of {shape[1]} "
                f"values, but the generator needs {generator.num_layers} of "
                f"{generator.latent_dim}",
                hint="the released e4e_ffhq_encode.pt fits the 1024 px FFHQ generator "
                "(preset = 'ffhq'); projection works with any generator (--method projection, "
                "or type = 'projection' in [inversion])",
            )
        with torch.no_grad():
            latent = self.encoder(e4e_input(images.to(self.context.device)))
        return Inversion(latent=latent.float().cpu())

    def files(self) -> list[Path]:
        return [self.path]


@soundguide.hookimpl
def register_inverters(registry):
    registry.add(E4E)


@soundguide.hookimpl
def register_weights(registry):
    from soundguide.encoders.e4e import E4E_FFHQ

    registry.add(E4E_FFHQ)
