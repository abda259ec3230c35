"""Regularizer ``latent_l2``: keep the edited latent close to the source latent.

``weight * sum((w - w0)^2)`` per item; with ``adaptive = true`` each layer's
squared distance is weighted by ``sigmoid(m_l)`` and ``m_l`` adapts after
every step (the original code's adaptive layer masking, for any number of layers).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

import soundguide
from soundguide import Regularizer, RegularizerConfig


class LatentL2(Regularizer):
    class Config(RegularizerConfig):
        type: Literal["latent_l2"] = "latent_l2"
        weight: float = Field(0.002, ge=0, allow_inf_nan=False, description="lambda of the paper.")
        adaptive: bool = Field(False, description="Adaptive per-layer weights sigmoid(m_l).")
        adaptive_rate: float = Field(0.1, gt=0, description="Step size of the m_l update.")
        adaptive_init: float = Field(
            1.0, allow_inf_nan=False, description="Initial logits m_l (the original code uses 1)."
        )

    config: Config
    presets = {"paper": {"weight": 0.002}}

    def setup(self, w0: torch.Tensor, image0: torch.Tensor | None) -> None:
        from soundguide.core.losses import AdaptiveLayerWeights

        self.adaptive = (
            AdaptiveLayerWeights(
                w0.shape[0],
                w0.shape[1],
                rate=self.config.adaptive_rate,
                init=self.config.adaptive_init,
            )
            if self.config.adaptive
            else None
        )
        self._last: torch.Tensor | None = None

    def loss(self, w, w0, image, image0) -> torch.Tensor:
        from soundguide.core.losses import latent_l2

        if self.adaptive is None:
            return latent_l2(w, w0)
        weighted = self.adaptive.weighted_distance(w, w0)
        self._last = weighted.detach()
        return weighted.sum(dim=-1)

    def after_step(self, w: torch.Tensor, w0: torch.Tensor) -> None:
        if self.adaptive is not None and self._last is not None:
            self.adaptive.update(self._last)


@soundguide.hookimpl
def register_regularizers(registry):
    registry.add(LatentL2)
