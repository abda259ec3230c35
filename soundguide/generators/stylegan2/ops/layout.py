"""Memory-layout helpers of the fast ops: channels-last tests and copies, batch folding."""

from __future__ import annotations

import torch

__all__ = ["as_batch", "as_one_sample", "channels_last_copy", "is_channels_last"]


def is_channels_last(x: torch.Tensor) -> bool:
    """True for a channels-last (N, C, H, W) tensor that is not also contiguous."""
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def channels_last_copy(x: torch.Tensor) -> torch.Tensor:
    """A channels-last copy of a contiguous (N, C, H, W) tensor.

    One 2-D transpose per sample, (C, H*W) to (H*W, C): torch copies a
    transposed matrix block by block, which is faster than its conversion of
    the 4-D tensor. Input and output: (N, C, H, W).
    """
    n, c, h, w = x.shape
    out = torch.empty(n, h, w, c, dtype=x.dtype, device=x.device)
    for i in range(n):
        out[i].view(h * w, c).copy_(x[i].view(c, h * w).t())
    return out.permute(0, 3, 1, 2)


def as_one_sample(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) as one sample of N * C channels, for a grouped convolution over the batch.

    With N = 1 the tensor itself: a view would rewrite the batch stride, and
    convolutions then no longer see a channels-last tensor as channels-last.
    Output: (1, N * C, H, W).
    """
    n, c, h, w = x.shape
    return x if n == 1 else x.view(1, n * c, h, w)


def as_batch(x: torch.Tensor, n: int) -> torch.Tensor:
    """The inverse of :func:`as_one_sample`: (1, N * C, H, W) as (N, C, H, W)."""
    return x if n == 1 else x.view(n, x.shape[1] // n, *x.shape[2:])
