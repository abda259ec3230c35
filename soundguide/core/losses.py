"""Loss terms and learning-rate schedules shared by the engine and plugins."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def cosine_distance(a: torch.Tensor, b: torch.Tensor, *, scale: float = 1.0) -> torch.Tensor:
    """``1 - scale * cos(a, b)`` along the last dimension.

    Input: (n, D) and (n, D) or (D,). Output: (n,). ``scale = exp(0.07)``
    gives the original code's guidance loss.
    """
    return 1.0 - scale * F.cosine_similarity(a, b.expand_as(a), dim=-1)


def layer_sq_distance(w: torch.Tensor, w0: torch.Tensor) -> torch.Tensor:
    """Squared distance per layer. Input: (n, L, D) twice. Output: (n, L)."""
    return (w - w0).pow(2).sum(dim=-1)


def latent_l2(
    w: torch.Tensor, w0: torch.Tensor, layer_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """``sum((w - w0)^2)`` per item, optionally weighted per layer.

    Input: (n, L, D) twice; ``layer_weights`` (n, L) or (L,). Output: (n,).
    """
    d = layer_sq_distance(w, w0)
    if layer_weights is not None:
        d = d * layer_weights
    return d.sum(dim=-1)


class AdaptiveLayerWeights:
    """Per-layer weights ``sigmoid(m_l)`` adapted every step (the original code's rule).

    The step's penalty per layer is ``d_l = sigmoid(m_l) * sum_D (w_l - w0_l)^2``,
    computed with the latent *before* the update; then ``m_l -= rate * d_l * (1 - d_l)``.
    Works for any number of layers, with one set of logits per batch item.
    """

    def __init__(self, n: int, num_layers: int, *, rate: float = 0.1, init: float = 0.0):
        self.logits = torch.full((n, num_layers), float(init))
        self.rate = rate

    def weights(self) -> torch.Tensor:
        """Output: (n, L)."""
        return torch.sigmoid(self.logits)

    def weighted_distance(self, w: torch.Tensor, w0: torch.Tensor) -> torch.Tensor:
        """``d_l`` per item and layer. Input: (n, L, D) twice. Output: (n, L)."""
        if self.logits.device != w.device:
            self.logits = self.logits.to(w.device)
        return self.weights().to(w.dtype) * layer_sq_distance(w, w0)

    @torch.no_grad()
    def update(self, weighted_distance: torch.Tensor) -> None:
        """Apply the rule with the ``d_l`` of the step just taken."""
        d = weighted_distance.detach().to(self.logits.dtype)
        self.logits = self.logits - self.rate * d * (1.0 - d)


def cosine_ramp_lr(t: float, lr: float, *, rampdown: float = 0.25, rampup: float = 0.05) -> float:
    """StyleCLIP's schedule at progress ``t = step / steps``.

    ``lr * min(1, t / rampup) * (0.5 - 0.5 cos(pi * min(1, (1 - t) / rampdown)))``:
    the first update (t = 0) has lr 0, then a linear ramp-up and a cosine ramp-down.
    """
    ramp = min(1.0, (1.0 - t) / rampdown) if rampdown > 0 else 1.0
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    if rampup > 0:
        ramp *= min(1.0, t / rampup)
    return lr * ramp


def constant_lr(t: float, lr: float, **_: float) -> float:
    return lr


SCHEDULES = {"cosine": cosine_ramp_lr, "constant": constant_lr}
