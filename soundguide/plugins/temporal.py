"""Regularizer ``temporal``: neighbouring video frames stay close, so the video does not flicker.

``weight * sum_t ||w_t - w_{t-1}||^2`` over the frames of a batch (a video's
chunk), optionally on chosen W+ layers only. Item t's value is its distance to
the frame before it; item 0's is its distance to the last fixed latent before
the batch (:meth:`set_context`: the previous chunk's overlap, given as the
latents those frames had at each step of their own run, so that step s of a
chunk sees them as step s of one long run would), or 0 for the first frame of
a video. The values sum to the penalty, so losses keep one
value per item.

A *sequence* term (``per_item = False``): it couples items, so the guarantee
that each item follows its solo path does not hold while it is active.

``causal = true`` (the default) pulls each frame towards the one before it and
never the reverse (the earlier frame is detached in the term): a frame's path
then depends only on the frames before it, so a video optimized in chunks
follows the paths of the whole-video run, every chunk (up to float rounding):
the overlap's recorded steps are exact context for the next chunk. ``causal = false`` uses the full gradient of the
sum (both neighbours pulled together).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

import soundguide
from soundguide import Regularizer, RegularizerConfig


class Temporal(Regularizer):
    per_item = False

    class Config(RegularizerConfig):
        type: Literal["temporal"] = "temporal"
        weight: float = Field(
            0.01, ge=0, allow_inf_nan=False, description="Multiplies sum_t ||w_t - w_{t-1}||^2."
        )
        layers: list[int] | None = Field(
            None, description="W+ layers the term compares (counted from 0); default all."
        )
        causal: bool = Field(
            True,
            description="Pull each frame towards the one before it only (chunked runs then "
            "equal whole runs on the first chunk); false: the full gradient.",
        )

    config: Config

    def setup(self, w0: torch.Tensor, image0: torch.Tensor | None) -> None:
        from soundguide.core.errors import ConfigError

        layers = self.config.layers
        count = w0.shape[1]
        if layers is not None:
            bad = [i for i in layers if not 0 <= i < count]
            if bad or not layers:
                raise ConfigError(
                    f"regularizer temporal: layers {bad or layers} are not among the "
                    f"generator's {count} W+ layers (0 .. {count - 1})"
                )
        self.index = None if layers is None else torch.tensor(sorted(set(layers)))
        self.before: torch.Tensor | None = None
        self.step = 0

    def set_context(self, before: torch.Tensor | None) -> None:
        if before is None or before.shape[-3] == 0:
            self.before = None
        else:  # the last fixed frame: (1, L, D), or per step (S, 1, L, D)
            self.before = before[..., -1:, :, :].detach()
        self.step = 0

    def loss(self, w, w0, image, image0) -> torch.Tensor:
        before = self.before
        if before is not None and before.ndim == 4:
            before = before[min(self.step, before.shape[0] - 1)]
        return temporal_penalty(w, before, self.index, causal=self.config.causal)

    def after_step(self, w: torch.Tensor, w0: torch.Tensor) -> None:
        self.step += 1


def temporal_penalty(
    w: torch.Tensor,
    before: torch.Tensor | None = None,
    layers: torch.Tensor | None = None,
    *,
    causal: bool = True,
) -> torch.Tensor:
    """``||w_t - w_{t-1}||^2`` per item (item 0: against ``before``, else 0).

    Input: (n, L, D); ``before`` (1, L, D) or None; ``layers`` indices or None.
    Output: (n,). ``causal`` detaches the earlier frame of each pair.
    """
    if layers is not None:
        w = w[:, layers.to(w.device)]
        before = None if before is None else before[:, layers.to(w.device)]
    previous = w[:-1]
    if before is not None:
        previous = torch.cat([before.to(w), previous])
    if causal:
        previous = previous.detach()
    later = w if before is not None else w[1:]
    values = (later - previous).pow(2).flatten(1).sum(dim=1)
    if before is None:
        values = torch.cat([values.new_zeros(1), values])
    return values


@soundguide.hookimpl
def register_regularizers(registry):
    registry.add(Temporal)
