"""Fast routes of StyleGAN3's ops, kept apart from the architecture (stylegan3.py).

Each function here computes what the function of the same name in
:mod:`soundguide.generators.nvidia.stylegan3` computes (those are the
specification, NVIDIA's ``impl='ref'`` ops) and takes the same arguments; the
synthesis layers call these unless their ``fast`` switch is off. All are
plain torch operators, float32 as the reference; what makes them faster:

- :func:`modulated_conv2d` scales the *input* by the styles and the output by
  the demodulation coefficients around one ordinary convolution with the
  shared weight, instead of building a weight per sample for a grouped
  convolution. With the generator's parameters frozen (as an editor runs it)
  the backward pass then needs no convolution weight gradient at all: the
  styles' gradient is a cheap reduction of the input's.
- :func:`upfirdn2d` up-samples with separable 1-D transposed convolutions
  (stride ``up``; the padding crops the output) instead of zero insertion,
  padding and a convolution ``up`` times as long per axis; down-sampling is a
  strided depthwise convolution, separable filters one axis at a time.
- :func:`filtered_lrelu` applies leaky ReLU, gain and clamp in place in one
  autograd node that keeps only its output for the backward pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn import functional as F

__all__ = ["filtered_lrelu", "lrelu_clamp", "modulated_conv2d", "upfirdn2d"]


def modulated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    *,
    demodulate: bool,
    padding: int,
    input_gain: torch.Tensor | None = None,
) -> torch.Tensor:
    """``stylegan3.modulated_conv2d`` as conv(x * s) * d. Input: x (N, I, H, W),
    weight (O, I, k, k), styles (N, I), input_gain () or (I,).
    Output: (N, O, H + 2 * padding - k + 1, W + 2 * padding - k + 1)."""
    batch, in_channels = x.shape[:2]
    if demodulate:
        weight = weight * weight.square().mean([1, 2, 3], keepdim=True).rsqrt()
        styles = styles * styles.square().mean().rsqrt()
    # the demodulation coefficient of (O, I, k, k) * s[n, i]: sum_i s[n, i]^2 * |w[o, i]|^2
    dcoefs = (
        (styles.square() @ weight.square().sum([2, 3]).t() + 1e-8).rsqrt() if demodulate else None
    )
    if input_gain is not None:
        styles = styles * input_gain.expand(batch, in_channels)
    x = F.conv2d(x * styles[:, :, None, None], weight, padding=padding)
    return x * dcoefs[:, :, None, None] if dcoefs is not None else x


def _transposed_axis(
    x: torch.Tensor, f: torch.Tensor, up: int, pad: tuple[int, int], dim: int
) -> torch.Tensor:
    """Zero insertion by ``up``, padding ``pad`` and convolution with the 1-D ``f``
    along ``dim`` (2: rows, 3: columns) as one depthwise transposed convolution."""
    channels, size, taps = x.shape[1], x.shape[dim], f.shape[0]
    # the full transposed convolution has (size - 1) * up + taps samples; the
    # reference's output drops lo of them at the start and hi at the end
    lo, hi = taps - 1 - pad[0], taps - up - pad[1]
    trim = min(max(min(lo, hi), 0), ((size - 1) * up + taps - 1) // 2)
    k = f.view(1, 1, taps, 1) if dim == 2 else f.view(1, 1, 1, taps)
    k = k.expand(channels, 1, *k.shape[2:])
    stride, padding = ((up, 1), (trim, 0)) if dim == 2 else ((1, up), (0, trim))
    y = F.conv_transpose2d(x, k, stride=stride, padding=padding, groups=channels)
    lo, hi = lo - trim, hi - trim
    if lo < 0 or hi < 0:  # more padding than the filter's reach: zeros around
        pads = [max(-lo, 0), max(-hi, 0)]
        y = F.pad(y, pads + [0, 0] if dim == 3 else [0, 0] + pads)
        lo, hi = max(lo, 0), max(hi, 0)
    if lo or hi:
        y = y.narrow(dim, lo, y.shape[dim] - lo - hi)
    return y


def upfirdn2d(
    x: torch.Tensor,
    f: torch.Tensor | None,
    *,
    up: int = 1,
    down: int = 1,
    padding: Sequence[int] = (0, 0, 0, 0),
    gain: float = 1.0,
) -> torch.Tensor:
    """``stylegan3.upfirdn2d`` by transposed and strided depthwise convolutions.

    Input: (N, C, H, W); ``f``: None, (K,) separable or (K, K); ``padding``:
    (x0, x1, y0, y1). Output: as the reference's.
    """
    x0, x1, y0, y1 = padding
    if f is None:
        if up == 1 and down == 1 and not any(padding) and gain == 1:
            return x
        f = x.new_ones(1)
    f = f.to(x.dtype) * gain ** (f.ndim / 2)
    channels = x.shape[1]
    if up > 1 and f.ndim == 1:
        x = _transposed_axis(x, f, up, (x0, x1), 3)
        x = _transposed_axis(x, f, up, (y0, y1), 2)
        return _decimate(x, None, down)
    if up > 1:  # a 2-D up-sampling filter: zero insertion, then the 2-D convolution
        batch, _, height, width = x.shape
        z = x.new_zeros(batch, channels, height * up, width * up)
        z[:, :, ::up, ::up] = x
        x = z
    if any(padding):
        x = F.pad(x, [max(x0, 0), max(x1, 0), max(y0, 0), max(y1, 0)])
        x = x[:, :, max(-y0, 0) : x.shape[2] - max(-y1, 0), max(-x0, 0) : x.shape[3] - max(-x1, 0)]
    return _decimate(x, f, down)


def _decimate(x: torch.Tensor, f: torch.Tensor | None, down: int) -> torch.Tensor:
    """Convolution with ``f`` (true, flipped), keeping every ``down``-th sample."""
    if f is None:
        return x[:, :, ::down, ::down] if down > 1 else x
    channels = x.shape[1]
    f = f.flip(list(range(f.ndim)))
    if f.ndim == 2:
        return F.conv2d(x, f.expand(channels, 1, *f.shape), stride=down, groups=channels)
    taps = f.shape[0]
    x = F.conv2d(
        x, f.view(1, 1, 1, taps).expand(channels, 1, 1, taps), stride=(1, down), groups=channels
    )
    return F.conv2d(
        x, f.view(1, 1, taps, 1).expand(channels, 1, taps, 1), stride=(down, 1), groups=channels
    )


class _LReLUClamp(torch.autograd.Function):
    """y = clamp(leaky_relu(x, slope) * gain, -clamp, clamp), keeping only y."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, slope: float, gain: float, clamp: float | None):  # type: ignore[override]
        y = F.leaky_relu(x, slope) if slope != 1 else x.clone()
        if gain != 1:
            y.mul_(gain)
        # one reduction decides whether any sample saturates (rare at the usual 256)
        saturated = clamp is not None and bool(y.abs().amax() >= clamp) if y.numel() else False
        if saturated:
            y.clamp_(-clamp, clamp)
        ctx.slope, ctx.gain, ctx.clamp = slope, gain, clamp if saturated else None
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (y,) = ctx.saved_tensors
        slope, gain, clamp = ctx.slope, ctx.gain, ctx.clamp
        if slope != 1:
            g = torch.where(y > 0, grad, grad * slope)  # y has x's sign (slope > 0)
        else:
            g = grad.clone()
        if gain != 1:
            g.mul_(gain)
        if clamp is not None:  # saturated samples pass no gradient
            g.masked_fill_(y.abs() >= clamp, 0)
        return g, None, None, None


def lrelu_clamp(x: torch.Tensor, slope: float, gain: float, clamp: float | None) -> torch.Tensor:
    """Leaky ReLU (``slope`` > 0), times ``gain``, clamped to ``[-clamp, clamp]``; same shape."""
    if slope <= 0:
        x = F.leaky_relu(x, slope) * gain
        return x.clamp(-clamp, clamp) if clamp is not None else x
    return _LReLUClamp.apply(x, slope, gain, clamp)


def filtered_lrelu(
    x: torch.Tensor,
    fu: torch.Tensor | None,
    fd: torch.Tensor | None,
    b: torch.Tensor,
    *,
    up: int,
    down: int,
    padding: Sequence[int],
    gain: float,
    slope: float,
    clamp: float | None,
) -> torch.Tensor:
    """``stylegan3.filtered_lrelu``. Input: (N, C, H, W), b: (C,). Output: (N, C, H', W')."""
    x = x + b[None, :, None, None]
    x = upfirdn2d(x, fu, up=up, padding=padding, gain=up**2)
    x = lrelu_clamp(x, slope, gain, clamp)
    return upfirdn2d(x, fd, down=down)
