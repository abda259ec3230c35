"""FIR filtering with up-sampling (upfirdn2d): the reference and the fast routes.

:func:`upfirdn2d` is the reference: rosinality's ``op.upfirdn2d`` (zero
insertion, padding, FIR filtering, decimation) written as one depthwise
convolution. The model's ``Blur`` and ``Upsample`` call it.

The fast routes compute the same for the two cases the generator uses, with
the flipped kernel kept as a depthwise weight in the input's dtype and layout
(:mod:`.cache`): :func:`blur` (symmetric padding, the convolution's own; an
optional bias added by the convolution) with :func:`blur_backward`, its input
gradient, and :func:`upsample`, 2x up-sampling as one depthwise transposed
convolution instead of zero insertion and a convolution four times as large.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .cache import derived

__all__ = ["blur", "blur_backward", "upfirdn2d", "upsample"]


def upfirdn2d(
    x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0)
) -> torch.Tensor:
    """Zero-insert up-sampling, padding, FIR filtering and decimation, per channel.

    Same result as rosinality's ``upfirdn2d`` (convolution with ``kernel``,
    pad ``(p0, p1)`` on both axes; negative pads crop) as one depthwise
    convolution.

    Input: x (N, C, H, W), kernel (K, K).
    Output: (N, C, (H * up + p0 + p1 - K) // down + 1, (W * up + p0 + p1 - K) // down + 1).
    """
    n, c, h, w = x.shape
    if up > 1:
        z = x.new_zeros(n, c, h * up, w * up)
        z[:, :, ::up, ::up] = x
        x = z
    p0, p1 = pad
    x = F.pad(x, (p0, p1, p0, p1))
    k = torch.flip(kernel, (0, 1)).to(x.dtype)
    out = F.conv2d(x, k.expand(c, 1, *k.shape), groups=c)
    return out[:, :, ::down, ::down] if down > 1 else out


def _depthwise(blur_module: nn.Module, channels: int, x: torch.Tensor) -> torch.Tensor:
    """The flipped kernel as a depthwise weight: (C, 1, K, K), in x's dtype and layout."""
    kernel = blur_module.kernel
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and x.shape[1] > 1

    def build() -> torch.Tensor:
        k = torch.flip(kernel, (0, 1)).to(x.dtype)
        w = k.expand(channels, 1, *k.shape).clone()
        return w.contiguous(memory_format=torch.channels_last) if channels_last else w

    return derived(blur_module, "depthwise", (kernel,), build, (channels, x.dtype, channels_last))


def blur(blur_module: nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``upfirdn2d(x, kernel, pad=pad) + bias`` for a ``Blur`` module (its ``kernel`` and ``pad``).

    Input: x (N, C, H, W), bias (C,) or None.
    Output: (N, C, H + p0 + p1 - K + 1, W + p0 + p1 - K + 1).
    """
    c = x.shape[1]
    p0, p1 = blur_module.pad
    if p0 == p1 and p0 >= 0:
        return F.conv2d(x, _depthwise(blur_module, c, x), bias, padding=p0, groups=c)
    return F.conv2d(F.pad(x, (p0, p1, p0, p1)), _depthwise(blur_module, c, x), bias, groups=c)


def blur_backward(blur_module: nn.Module, grad: torch.Tensor) -> torch.Tensor:
    """Gradient of :func:`blur` with respect to its input (symmetric pads only).

    Input: grad (N, C, H', W'). Output: (N, C, H, W).
    """
    c = grad.shape[1]
    return F.conv_transpose2d(
        grad, _depthwise(blur_module, c, grad), padding=blur_module.pad[0], groups=c
    )


def upsample(upsample_module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``upfirdn2d(x, kernel, up=factor, pad=pad)`` for an ``Upsample`` module.

    Input: (N, C, H, W). Output: (N, C, factor * H, factor * W).
    """
    kernel, factor = upsample_module.kernel, upsample_module.factor
    c = x.shape[1]
    k_size = kernel.shape[0]
    p0, p1 = upsample_module.pad
    padding = k_size - 1 - p0
    if p1 != p0 - factor + 1 or padding < 0:
        return upfirdn2d(x, kernel, up=factor, pad=upsample_module.pad)
    weight = derived(
        upsample_module,
        "depthwise",
        (kernel,),
        lambda: kernel.to(x.dtype).expand(c, 1, k_size, k_size).clone(),
        (c, x.dtype),
    )
    return F.conv_transpose2d(x, weight, stride=factor, padding=padding, groups=c)
