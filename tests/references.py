"""The original code's computations written out, as references the tests compare to.

Shared by several test modules (which import this, not each other). Not a test module.
"""

from __future__ import annotations

import torch


def original_adaptive_step(latent, latent_init, mask):
    """The original code's per-layer loop, written out for one item (batch 1)."""
    loss = 0
    for idx in range(latent.shape[1]):
        layer = torch.sigmoid(mask[idx]) * ((latent_init[:, idx, :] - latent[:, idx, :]) ** 2).sum()
        loss += layer
        mask[idx] = mask[idx] - 0.1 * layer.item() * (1 - layer.item())
    return loss
