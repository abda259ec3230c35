"""StyleGAN2 generator that loads rosinality-format checkpoints, in pure PyTorch.

The architecture is the one of rosinality's ``stylegan2-pytorch`` (mapping MLP,
constant input, modulated 3x3 convolutions with demodulation, [1, 3, 3, 1] FIR
up-sampling, noise injection, skip-connected ToRGB layers), so the state dict
of a checkpoint's ``g_ema`` loads as it is.

It is written for latent optimization, where the generator is frozen and the
gradient is taken with respect to W+ only. With frozen weights every
StyledConv runs as one autograd Function (``_FrozenStyledConv``) that keeps
only its input, style, demodulation and output for the backward pass and
computes no weight gradients:

* demodulation coefficients come from a cached ``(w ** 2).sum((kh, kw))``
  matrix: ``d = rsqrt(s ** 2 @ wsq + 1e-8)``;
* the style scales the *activations* (``conv(x * s) * d``), or, where the
  weight is smaller than the activations (high-resolution layers), the
  weights per sample as in the original; either way the backward pass needs
  only the input gradient of an unmodulated convolution;
* wide 3x3 layers on CPU run as Winograd F(4x4, 3x3) convolutions (4x fewer
  multiplications; forward and exact adjoint);
* FIR filters are depthwise convolutions, and the 2x FIR up-sampling of the
  RGB skip is a depthwise transposed convolution;
* equalized-learning-rate weights (``weight * scale``) and other derived
  tensors are computed once and cached until their source tensors change
  (new data, in-place update, ``load_state_dict``, ``.to()``); they are plain
  attributes, never state-dict entries.

When weights require gradients (training) the same formulas run through
plain autograd. ``fast=False`` switches every layer to the textbook
formulation (per-sample modulated weights, grouped convolutions), kept as a
readable specification and a check of the fast path.
"""

from __future__ import annotations

import contextvars
import functools
import math
import re
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

from soundguide.core.errors import CheckpointError, ConfigError, LatentError

__all__ = [
    "LatentShapeError",
    "StyleGAN2Generator",
    "channels_at",
    "infer_stylegan2_config",
    "load_stylegan2",
    "upfirdn2d",
]

SQRT2 = math.sqrt(2.0)
BLUR_KERNEL = (1, 3, 3, 1)
Precision = Literal["fp32", "bf16"]


class LatentShapeError(LatentError, ValueError):
    """A latent or noise tensor handed to the generator has the wrong shape."""


def channels_at(resolution: int, channel_multiplier: int) -> int:
    """Feature channels of rosinality's generator at ``resolution`` px.

    512 up to 32 px, then ``16384 * channel_multiplier / resolution``
    (256 * cm at 64 px ... 16 * cm at 1024 px).
    """
    if resolution <= 32:
        return 512
    return 16384 * channel_multiplier // resolution


def make_kernel(taps: Sequence[float]) -> torch.Tensor:
    """Separable 2-D FIR kernel normalized to sum 1. Output: (K, K)."""
    k = torch.tensor(list(taps), dtype=torch.float32)
    k = k[None, :] * k[:, None]
    return k / k.sum()


def upfirdn2d(
    x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0)
) -> torch.Tensor:
    """Zero-insert up-sampling, padding, FIR filtering and decimation, per channel.

    Same result as rosinality's ``upfirdn2d`` (convolution with ``kernel``,
    pad ``(p0, p1)`` on both axes; negative pads crop) as one depthwise
    convolution. Input: (N, C, H, W); kernel (K, K). Output:
    (N, C, (H * up + p0 + p1 - K) // down + 1, same for W).
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


WINOGRAD_POINTS = (0.0, -1.0, 1.0, 0.5, -2.0)


@functools.cache
def _winograd_f43(
    points: tuple[float, ...] = WINOGRAD_POINTS,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Winograd F(4x4, 3x3) matrices (A^T (4, 6), G (6, 3), B^T (6, 6)), float64.

    Interpolation points 0, -1, 1, 1/2, -2 and infinity: in float32 they give
    about half the error of the common 0, +-1, +-2 (a few times that of a
    direct convolution, far below the 1e-4 parity tolerance).
    """
    points = torch.tensor(points, dtype=torch.float64)
    m, r, n = 4, 3, 6
    at = torch.zeros(m, n, dtype=torch.float64)
    g = torch.zeros(n, r, dtype=torch.float64)
    for j, p in enumerate(points):
        at[:, j] = p ** torch.arange(m)
        others = torch.cat([points[:j], points[j + 1 :]])
        g[j] = p ** torch.arange(r) / torch.prod(p - others)
    at[m - 1, n - 1] = 1.0
    g[n - 1, r - 1] = 1.0
    # B^T solves  sum_l at[i, l] g[l, k] bt[l, j] = [j == i + k]  for all i, k, j
    coef = torch.einsum("il,lk->ikl", at, g).reshape(m * r, n)
    system = torch.kron(coef, torch.eye(n, dtype=torch.float64))
    target = torch.zeros(m, r, n, dtype=torch.float64)
    for i in range(m):
        for k in range(r):
            target[i, k, i + k] = 1.0
    bt = torch.linalg.lstsq(system, target.reshape(-1, 1)).solution.view(n, n)
    return at, g, bt


def winograd_weight(weight: torch.Tensor) -> torch.Tensor:
    """3x3 weights (C_out, C_in, 3, 3) in the F(4x4, 3x3) domain: (36, C_out, C_in).

    One matrix product with kron(G, G) in the weight's dtype (float64
    intermediates would hold 4x the layer's weights twice over).
    """
    _, g, _ = _winograd_f43()
    gg = torch.kron(g, g).to(device=weight.device, dtype=weight.dtype)  # (36, 9)
    c_out, c_in = weight.shape[:2]
    return torch.mm(gg, weight.reshape(c_out * c_in, 9).t()).view(36, c_out, c_in)


def _winograd_transforms(like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    at, _, bt = _winograd_f43()
    return (
        torch.kron(bt, bt).to(device=like.device, dtype=like.dtype),
        torch.kron(at, at).to(device=like.device, dtype=like.dtype),
    )


WINOGRAD_NCHW_PIXELS = 4096
"""Above this many pixels per channel an NCHW batch is converted to channels-last for
Winograd's tile gathers, whose strided NCHW reads cost more than the conversion
(at 128 px, 256 channels: 156 against 171 ms forward, before chunking)."""

WINOGRAD_CHUNK_BYTES = 8 << 20
"""Winograd works through the tile rows in chunks whose transformed tiles take
about this much: the transient memory stays small and the transforms run in cache."""


def _channels_last(x: torch.Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def _channels_last_copy(x: torch.Tensor) -> torch.Tensor:
    """A channels-last copy of a contiguous (N, C, H, W) tensor.

    One 2-D transpose per sample, (C, H*W) to (H*W, C): torch copies a
    transposed matrix block by block, about 1.7x faster than converting the
    4-D tensor (at 128 px, 256 channels: 9.5 against 16 ms).
    """
    n, c, h, w = x.shape
    out = torch.empty(n, h, w, c, dtype=x.dtype, device=x.device)
    for i in range(n):
        out[i].view(h * w, c).copy_(x[i].view(c, h * w).t())
    return out.permute(0, 3, 1, 2)


def winograd_conv3x3(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``conv2d(x, w, padding=1)`` by Winograd F(4x4, 3x3), with ``u = winograd_weight(w)``.

    Four times fewer multiplications than a direct convolution; the input and
    output transforms are two small matrix products. Input: (N, C_in, H, W)
    with H and W multiples of 4. Output: (N, C_out, H, W) in the input's
    memory format. The tiles are gathered channels-last (whole channel
    vectors at a time), except for small NCHW batches, where converting
    there costs more than it saves.
    """
    n, c, h, w = x.shape
    if _channels_last(x):
        return _winograd_nhwc(x, u, torch.channels_last)
    if n * h * w > WINOGRAD_NCHW_PIXELS:
        return _winograd_nhwc(_channels_last_copy(x.contiguous()), u)
    th, tw = h // 4, w // 4
    bb, aa = _winograd_transforms(x)
    tiles = F.pad(x, (1, 1, 1, 1)).unfold(2, 6, 4).unfold(3, 6, 4)  # (N, C, th, tw, 6, 6)
    tiles = tiles.permute(4, 5, 1, 0, 2, 3).reshape(36, c * n * th * tw)
    v = torch.mm(bb, tiles).view(36, c, n * th * tw)
    m = torch.bmm(u, v)  # (36, C_out, N * th * tw)
    y = torch.mm(aa, m.view(36, -1)).view(4, 4, -1, n, th, tw)
    return y.permute(3, 2, 4, 0, 5, 1).reshape(n, -1, h, w)


def winograd_conv3x3_backward(grad: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Gradient of :func:`winograd_conv3x3` with respect to its input (its exact adjoint).

    Input: grad (N, C_out, H, W). Output: (N, C_in, H, W) in grad's memory
    format, computed channels-last (the tiles' overlaps are added there).
    """
    if _channels_last(grad):
        return _winograd_nhwc_backward(grad, u, torch.channels_last)
    return _winograd_nhwc_backward(_channels_last_copy(grad.contiguous()), u)


def _tile_rows(n: int, tw: int, channels: int, element_size: int) -> int:
    """Tile rows per chunk: the chunk's 36 transformed tiles take about WINOGRAD_CHUNK_BYTES."""
    return max(1, WINOGRAD_CHUNK_BYTES // (36 * n * tw * channels * element_size))


def _winograd_nhwc(
    x: torch.Tensor, u: torch.Tensor, memory_format: torch.memory_format = torch.contiguous_format
) -> torch.Tensor:
    # x channels-last: every gather moves whole channel vectors
    n, c, h, w = x.shape
    c_out = u.shape[1]
    th, tw = h // 4, w // 4
    bb, aa = _winograd_transforms(x)
    xp = F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, 1, 1, 1))  # (N, H+2, W+2, C)
    tiles = xp.unfold(1, 6, 4).unfold(2, 6, 4)  # (N, th, tw, C, 6, 6), a view
    out = torch.empty(n, c_out, h, w, dtype=x.dtype, device=x.device, memory_format=memory_format)
    # (N, C_out, th, 4, tw, 4) view of the output, whatever its memory format
    blocks = out.unflatten(3, (tw, 4)).unflatten(2, (th, 4))
    step = _tile_rows(n, tw, max(c, c_out), x.element_size())
    for r0 in range(0, th, step):
        k = min(step, th - r0)
        # tiles gathered tile-major, channels innermost, and transformed as a
        # batch of (36, 36) @ (36, C) products: about 10 % faster than one
        # (36, 36) @ (36, tiles * C) product over a frequency-major gather
        chunk = tiles[:, r0 : r0 + k].permute(0, 1, 2, 4, 5, 3).reshape(-1, 36, c)
        v = torch.matmul(bb, chunk)  # (N * k * tw, 36, C)
        m = torch.bmm(v.transpose(0, 1), u.transpose(1, 2))  # (36, N * k * tw, C_out)
        y = torch.mm(aa, m.view(36, -1)).view(4, 4, n, k, tw, c_out)
        blocks[:, :, r0 : r0 + k].copy_(y.permute(2, 5, 3, 0, 4, 1))
    return out


def _winograd_nhwc_backward(
    grad: torch.Tensor,
    u: torch.Tensor,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> torch.Tensor:
    # grad channels-last
    n, c_out, h, w = grad.shape
    c_in = u.shape[2]
    th, tw = h // 4, w // 4
    bb, aa = _winograd_transforms(grad)
    g = grad.permute(0, 2, 3, 1).reshape(n, th, 4, tw, 4, c_out)
    # the overlapping 6x6 tiles (stride 4) are added into the padded input
    acc = grad.new_zeros(n, th + 1, 4, tw + 1, 4, c_in)
    step = _tile_rows(n, tw, max(c_in, c_out), grad.element_size())
    a_t = aa.t().contiguous()
    for r0 in range(0, th, step):
        k = min(step, th - r0)
        # tile-major, channels innermost, as in the forward
        chunk = g[:, r0 : r0 + k].permute(0, 1, 3, 2, 4, 5).reshape(-1, 16, c_out)
        gm = torch.matmul(a_t, chunk)  # (N * k * tw, 36, C_out)
        gv = torch.bmm(gm.transpose(0, 1), u)  # (36, N * k * tw, C_in)
        gd = torch.mm(bb.t(), gv.view(36, -1)).view(6, 6, n, k, tw, c_in)
        rows = acc[:, r0 : r0 + k + 1]  # chunks overlap by one row: sequential adds
        rows[:, :k, :, :tw] += gd[:4, :4].permute(2, 3, 0, 4, 1, 5)
        rows[:, 1:, :2, :tw] += gd[4:, :4].permute(2, 3, 0, 4, 1, 5)
        rows[:, :k, :, 1:, :2] += gd[:4, 4:].permute(2, 3, 0, 4, 1, 5)
        rows[:, 1:, :2, 1:, :2] += gd[4:, 4:].permute(2, 3, 0, 4, 1, 5)
    acc = acc.view(n, 4 * th + 4, 4 * tw + 4, c_in)[:, 1 : h + 1, 1 : w + 1]
    return acc.permute(0, 3, 1, 2).contiguous(memory_format=memory_format)


_SKIP_INIT = contextvars.ContextVar("soundguide_stylegan2_skip_init", default=False)


@contextmanager
def _skip_init() -> Iterator[None]:
    """Build modules with uninitialized tensors (they are about to be loaded)."""
    token = _SKIP_INIT.set(True)
    try:
        yield
    finally:
        _SKIP_INIT.reset(token)


def _randn(*shape: int) -> torch.Tensor:
    return torch.empty(*shape) if _SKIP_INIT.get() else torch.randn(*shape)


def _cache_key(tensors: Sequence[torch.Tensor], extra: tuple[Any, ...]) -> tuple[Any, ...]:
    return (
        tuple((t.data_ptr(), t._version, t.device, t.dtype, tuple(t.shape)) for t in tensors),
        extra,
    )


class _Derived(nn.Module):
    """Base of layers that cache tensors derived from their parameters.

    A derived tensor is rebuilt when a source tensor's storage, version
    counter (bumped by every in-place update, ``load_state_dict`` included),
    device, dtype or shape changes. While gradients flow to the sources
    (training), under ``torch.inference_mode`` and while compiling, nothing is
    cached.
    """

    def __init__(self) -> None:
        super().__init__()
        self._derived: dict[str, tuple[tuple[Any, ...], Any]] = {}

    def derived(
        self,
        name: str,
        sources: Sequence[torch.Tensor],
        build: Callable[[], Any],
        extra: tuple[Any, ...] = (),
    ) -> Any:
        if torch.compiler.is_compiling():  # first: dynamo then traces build() alone
            return build()
        if (
            torch.is_grad_enabled() and any(t.requires_grad for t in sources)
        ) or torch.is_inference_mode_enabled():  # inference tensors must not leak out
            return build()
        key = _cache_key(sources, extra)
        hit = self._derived.get(name)
        if hit is not None and hit[0] == key:
            return hit[1]
        with torch.no_grad():
            value = build()
        self._derived[name] = (key, value)
        return value

    def clear_derived(self) -> None:
        self._derived.clear()


# Module and attribute names below (style, input, conv1, to_rgb1, convs, to_rgbs,
# noises, conv, modulation, blur, kernel, noise, activate, upsample, weight, bias)
# are those of rosinality's checkpoints: the state-dict keys depend on them.


class PixelNorm(nn.Module):
    """Normalizes each vector to unit RMS. Input/Output: (N, D)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + 1e-8)


class EqualLinear(nn.Module):
    """Linear layer with equalized learning rate (weights scaled at run time).

    Input: (N, in_dim). Output: (N, out_dim); with ``activation`` a leaky ReLU
    (slope 0.2) of the biased output, times sqrt(2).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        *,
        bias_init: float = 0.0,
        lr_mul: float = 1.0,
        activation: bool = False,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(_randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # alpha * (x @ W^T) + bias: the scale rides on the product, so no scaled
        # copy of the weight is made or kept (17 MB over a 256 px generator)
        bias = self.bias * self.lr_mul
        if x.dim() == 2:
            out = torch.addmm(bias.to(x.dtype), x, self.weight.t().to(x.dtype), alpha=self.scale)
        else:
            out = F.linear(x, self.weight * self.scale, bias)
        return F.leaky_relu(out, 0.2) * SQRT2 if self.activation else out


class ConstantInput(nn.Module):
    """The learned 4x4 input. Output: (1, C, 4, 4) expanded to the batch."""

    def __init__(self, channel: int, size: int = 4) -> None:
        super().__init__()
        self.input = nn.Parameter(_randn(1, channel, size, size))

    def forward(self, batch: int) -> torch.Tensor:
        return self.input.expand(batch, -1, -1, -1)


class Blur(_Derived):
    """FIR low-pass ``kernel`` with padding ``pad``, one channel at a time.

    Input: (N, C, H, W). Output: (N, C, H + p0 + p1 - K + 1, ...).
    """

    def __init__(
        self, kernel: Sequence[float], pad: tuple[int, int], upsample_factor: int = 1
    ) -> None:
        super().__init__()
        self.register_buffer("kernel", make_kernel(kernel) * upsample_factor**2)
        self.pad = pad

    def depthwise(self, channels: int, x: torch.Tensor) -> torch.Tensor:
        """The flipped kernel as a depthwise weight: (C, 1, K, K), in x's dtype and layout."""
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and x.shape[1] > 1

        def build() -> torch.Tensor:
            k = torch.flip(self.kernel, (0, 1)).to(x.dtype)
            w = k.expand(channels, 1, *k.shape).clone()
            return w.contiguous(memory_format=torch.channels_last) if channels_last else w

        return self.derived("depthwise", (self.kernel,), build, (channels, x.dtype, channels_last))

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        c = x.shape[1]
        p0, p1 = self.pad
        if p0 == p1 and p0 >= 0:
            return F.conv2d(x, self.depthwise(c, x), bias, padding=p0, groups=c)
        return F.conv2d(F.pad(x, (p0, p1, p0, p1)), self.depthwise(c, x), bias, groups=c)

    def backward_input(self, grad: torch.Tensor) -> torch.Tensor:
        """Gradient of :meth:`forward` with respect to its input (symmetric pads only)."""
        c = grad.shape[1]
        return F.conv_transpose2d(grad, self.depthwise(c, grad), padding=self.pad[0], groups=c)


class Upsample(_Derived):
    """2x FIR up-sampling (zero insertion, then ``kernel`` times 4).

    Equal to rosinality's ``upfirdn2d(x, kernel, up=2, pad=(p0, p1))``, done
    as a depthwise transposed convolution. Input: (N, C, H, W). Output:
    (N, C, 2H, 2W).
    """

    def __init__(self, kernel: Sequence[float], factor: int = 2) -> None:
        super().__init__()
        self.factor = factor
        k = make_kernel(kernel) * factor**2
        self.register_buffer("kernel", k)
        p = k.shape[0] - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        k_size = self.kernel.shape[0]
        p0, p1 = self.pad
        padding = k_size - 1 - p0
        if p1 != p0 - self.factor + 1 or padding < 0:
            return upfirdn2d(x, self.kernel, up=self.factor, pad=self.pad)
        weight = self.derived(
            "depthwise",
            (self.kernel,),
            lambda: self.kernel.to(x.dtype).expand(c, 1, k_size, k_size).clone(),
            (c, x.dtype),
        )
        return F.conv_transpose2d(x, weight, stride=self.factor, padding=padding, groups=c)


class ModulatedConv2d(_Derived):
    """Convolution whose input channels are scaled by a style, then demodulated.

    Input: x (N, C_in, H, W) and a latent (N, style_dim). Output: (N, C_out,
    H, W), or (N, C_out, 2H, 2W) with ``upsample`` (transposed convolution,
    stride 2, then a [1, 3, 3, 1] blur).
    """

    def __init__(
        self,
        in_channel: int,
        out_channel: int,
        kernel_size: int,
        style_dim: int,
        *,
        demodulate: bool = True,
        upsample: bool = False,
        blur_kernel: Sequence[float] = BLUR_KERNEL,
    ) -> None:
        super().__init__()
        self.in_channel = in_channel
        self.out_channel = out_channel
        self.kernel_size = kernel_size
        self.demodulate = demodulate
        self.upsample = upsample
        self.fast = True
        self.winograd = True
        if upsample:
            factor = 2
            p = (len(blur_kernel) - factor) - (kernel_size - 1)
            self.blur = Blur(
                blur_kernel, pad=((p + 1) // 2 + factor - 1, p // 2 + 1), upsample_factor=factor
            )
        self.scale = 1 / math.sqrt(in_channel * kernel_size**2)
        self.padding = kernel_size // 2
        weight = _randn(1, out_channel, in_channel, kernel_size, kernel_size)
        if upsample:
            # stored C_in-major: the transposed convolution's (C_in, C_out, k, k)
            # view is then contiguous, and no call copies it (four 9 MB copies
            # per pass over a 256 px generator otherwise); load_state_dict and
            # .to() keep the layout, the shape and the keys are unchanged
            weight = weight.transpose(1, 2).contiguous().transpose(1, 2)
        self.weight = nn.Parameter(weight)
        self.modulation = EqualLinear(style_dim, in_channel, bias_init=1.0)

    def conv_weight(self, x: torch.Tensor) -> torch.Tensor:
        """The weight, without the equalized-lr ``scale``, in the layout the convolution wants.

        (C_out, C_in, k, k), or (C_in, C_out, k, k) for the transposed
        convolution. A view of the parameter (no copy is kept: the scale rides
        on the style), except for channels-last or a different dtype.
        """
        w = self.weight[0]
        if self.upsample:
            w = w.transpose(0, 1)
        if x.dtype == w.dtype and not _channels_last(x):
            return w

        def build() -> torch.Tensor:
            return w.to(x.dtype).contiguous(memory_format=torch.channels_last)

        return self.derived("conv_weight", (self.weight,), build, (x.dtype,))

    def weight_sq(self) -> torch.Tensor:
        """Sum of squared scaled weights over the kernel window: (C_in, C_out)."""
        return self.derived(
            "weight_sq",
            (self.weight,),
            lambda: (self.weight[0] * self.scale).square().sum((2, 3)).t().contiguous(),
        )

    def demodulation(self, s: torch.Tensor) -> torch.Tensor:
        """d = 1 / sqrt(sum((w * s) ** 2) + 1e-8) per output channel. Input (N, C_in); output (N, C_out)."""
        return torch.rsqrt(s.square() @ self.weight_sq() + 1e-8)

    def forward_parts(
        self, x: torch.Tensor, latent: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The convolution of the modulated input and, apart, its demodulation (N, C_out)."""
        s = self.modulation(latent)
        if not self.fast:
            return self._forward_textbook(x, s), None
        weight = self.conv_weight(x)
        xs = x * (s * self.scale)[:, :, None, None].to(x.dtype)
        if self.upsample:
            out = self.blur(F.conv_transpose2d(xs, weight, stride=2))
        else:
            out = F.conv2d(xs, weight, padding=self.padding)
        return out, (self.demodulation(s) if self.demodulate else None)

    def modulate_weights(self, x: torch.Tensor) -> bool:
        """Whether scaling the weights (per sample) is cheaper than scaling ``x``.

        True when the weight is smaller than one sample's activations (the
        high-resolution layers), and the batch can be one grouped convolution.
        """
        n, _, h, w = x.shape
        if n > 1 and not x.is_contiguous():
            return False
        return self.out_channel * self.kernel_size**2 < h * w

    def use_winograd(self, x: torch.Tensor) -> bool:
        """Whether the frozen path runs this layer as a Winograd convolution.

        On CPUs, for 3x3 layers of 256+ channels of at least 64x64 pixels
        whose batch has at most 16384 pixels per channel: there the 4x fewer
        multiplications outweigh the memory-bound transforms (at 256 px,
        128 channels, they do not). Below 64x64 the gain does not pay for the
        cached weights (4x the layer's weights): at 32 px, 512 channels, 40 ms
        per edit step for 38 MB, against 210 ms at 64 px. GPUs have their own
        (cuDNN).
        """
        n, _, h, w = x.shape
        if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
            return False
        return (
            self.winograd
            and not self.upsample
            and self.kernel_size == 3
            and x.device.type == "cpu"
            and min(self.in_channel, self.out_channel) >= 256
            and h % 4 == 0
            and w % 4 == 0
            and h * w >= 4096
            and n * h * w <= 16384
        )

    def winograd_weight(self, x: torch.Tensor) -> torch.Tensor:
        """The cached (unscaled) weight in the Winograd domain: (36, C_out, C_in)."""
        return self.derived(
            "winograd",
            (self.weight,),
            lambda: winograd_weight(self.weight[0].to(x.dtype)),
            (x.dtype,),
        )

    def frozen_forward(
        self, x: torch.Tensor, s: torch.Tensor, d: torch.Tensor, bias: torch.Tensor
    ) -> torch.Tensor:
        """``blur?(conv(x * s)) * d + bias`` without autograd, for frozen weights.

        The convolution uses the unscaled weight: ``s`` carries the
        equalized-lr scale. Input: x (N, C_in, H, W), s (N, C_in), d (N, C_out), bias (C_out,).
        Output: (N, C_out, H', W').
        """
        n, c_in, h, w = x.shape
        k = self.kernel_size
        if self.use_winograd(x):
            out = winograd_conv3x3(x * s[:, :, None, None], self.winograd_weight(x))
            return out.mul_(d[:, :, None, None]).add_(bias[:, None, None])
        weight = self.conv_weight(x)
        if self.modulate_weights(x):
            # per-sample weights, in x's memory format (channels-last stays channels-last)
            layout = torch.channels_last if _channels_last(x) else torch.contiguous_format
            if self.upsample:  # weight: (C_in, C_out, k, k)
                wm = weight[None] * (s[:, :, None, None, None] * d[:, None, :, None, None])
                out = F.conv_transpose2d(
                    _as_one_sample(x),
                    wm.reshape(n * c_in, self.out_channel, k, k).contiguous(memory_format=layout),
                    stride=2,
                    groups=n,
                )
                return self.blur(_as_batch(out, n), bias)
            wm = weight[None] * (d[:, :, None, None, None] * s[:, None, :, None, None])
            out = F.conv2d(
                _as_one_sample(x),
                wm.reshape(n * self.out_channel, c_in, k, k).contiguous(memory_format=layout),
                bias.repeat(n),
                padding=self.padding,
                groups=n,
            )
            return _as_batch(out, n)
        xs = x * s[:, :, None, None]
        # with one sample the bias can ride on the convolution as bias / d
        folded = bias / d[0] if n == 1 else None
        if self.upsample:
            out = self.blur(F.conv_transpose2d(xs, weight, stride=2), folded)
        else:
            out = F.conv2d(xs, weight, folded, padding=self.padding)
        del xs
        out.mul_(d[:, :, None, None])
        return out if n == 1 else out.add_(bias[:, None, None])

    def folds_grad_scale(self, grad: torch.Tensor, x: torch.Tensor) -> bool:
        """Whether :meth:`frozen_backward` takes grad's per-channel factor on the weight.

        For one sample, off the Winograd path, where the weight is smaller
        than grad (the high-resolution layers): scaling the weight then costs
        less than a pass over grad.
        """
        n, _, h, w = grad.shape
        return n == 1 and self.in_channel * self.kernel_size**2 < h * w and not self.use_winograd(x)

    def frozen_backward(
        self, grad: torch.Tensor, x: torch.Tensor, scale: torch.Tensor
    ) -> torch.Tensor:
        """Gradient of ``blur?(conv(x))`` with respect to x, for grad's channels times ``scale``.

        Unmodulated, unscaled weight; ``scale``: (N, C_out). It rides on the
        weight where :meth:`folds_grad_scale` says so; otherwise grad is
        scaled in place.
        """
        folded = self.folds_grad_scale(grad, x)
        if not folded:
            grad = grad.mul_(scale[:, :, None, None])
        if self.use_winograd(x):
            return winograd_conv3x3_backward(grad, self.winograd_weight(x))
        weight = self.conv_weight(x)
        if self.upsample:
            grad = self.blur.backward_input(grad)  # per channel: it commutes with the scale
            if folded:  # weight: (C_in, C_out, k, k)
                weight = weight * scale[0, None, :, None, None].to(weight.dtype)
            return F.conv2d(grad, weight, stride=2)
        if folded:  # weight: (C_out, C_in, k, k)
            weight = weight * scale[0, :, None, None, None].to(weight.dtype)
        return torch.ops.aten.convolution_backward(
            grad,
            x,
            weight,
            None,
            [1, 1],
            [self.padding, self.padding],
            [1, 1],
            False,
            [0, 0],
            1,
            [True, False, False],
        )[0]

    def forward(self, x: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        out, d = self.forward_parts(x, latent)
        return out if d is None else out * d[:, :, None, None].to(out.dtype)

    def _forward_textbook(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        # Per-sample weights w * s, demodulated, as one grouped convolution.
        n, c_in, h, w = x.shape
        k = self.kernel_size
        weight = self.weight * self.scale * s[:, None, :, None, None]  # (N, C_out, C_in, k, k)
        if self.demodulate:
            weight = (
                weight * torch.rsqrt(weight.square().sum((2, 3, 4)) + 1e-8)[..., None, None, None]
            )
        x = x.reshape(1, n * c_in, h, w)
        weight = weight.to(x.dtype)
        if self.upsample:
            weight = weight.transpose(1, 2).reshape(n * c_in, self.out_channel, k, k)
            out = F.conv_transpose2d(x, weight, stride=2, groups=n)
            return self.blur(out.view(n, self.out_channel, *out.shape[2:]))
        weight = weight.reshape(n * self.out_channel, c_in, k, k)
        out = F.conv2d(x, weight, padding=self.padding, groups=n)
        return out.view(n, self.out_channel, *out.shape[2:])


def _as_one_sample(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) as one sample of N * C channels, for a grouped convolution over the batch.

    With N = 1 the tensor itself: a view would rewrite the batch stride, and
    convolutions then no longer see a channels-last tensor as channels-last.
    """
    n, c, h, w = x.shape
    return x if n == 1 else x.view(1, n * c, h, w)


def _as_batch(x: torch.Tensor, n: int) -> torch.Tensor:
    """The inverse of :func:`_as_one_sample`: (1, N * C, H, W) as (N, C, H, W)."""
    return x if n == 1 else x.view(n, x.shape[1] // n, *x.shape[2:])


class NoiseInjection(nn.Module):
    """Adds ``weight * noise``; the noise map is a fixed buffer of the generator."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return x + self.weight * noise


class FusedLeakyReLU(nn.Module):
    """Bias, leaky ReLU (slope 0.2), times sqrt(2). Input/Output: (N, C, H, W)."""

    def __init__(self, channel: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channel))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x + self.bias[:, None, None].to(x.dtype), 0.2) * SQRT2


class StyledConv(nn.Module):
    """Modulated convolution, noise, bias and activation.

    Input: (N, C_in, H, W), a latent (N, style_dim) and a noise map
    (1, 1, H', W'). Output: (N, C_out, H', W') with H' = H or 2H.
    """

    def __init__(
        self,
        in_channel: int,
        out_channel: int,
        kernel_size: int,
        style_dim: int,
        *,
        upsample: bool = False,
        blur_kernel: Sequence[float] = BLUR_KERNEL,
    ) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(
            in_channel,
            out_channel,
            kernel_size,
            style_dim,
            upsample=upsample,
            blur_kernel=blur_kernel,
        )
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channel)

    def _frozen(self, x: torch.Tensor) -> bool:
        conv = self.conv
        if torch.compiler.is_compiling():
            return False
        if torch.is_grad_enabled() and (
            conv.weight.requires_grad
            or self.noise.weight.requires_grad
            or self.activate.bias.requires_grad
        ):
            return False
        if torch.is_autocast_enabled(x.device.type):
            return False
        return not conv.upsample or conv.blur.pad[0] == conv.blur.pad[1]

    def forward(self, x: torch.Tensor, latent: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        conv = self.conv
        if conv.fast and self._frozen(x):
            s = conv.modulation(latent).to(x.dtype)
            d2 = (conv.demodulation(s) * SQRT2).to(x.dtype)
            terms = conv.derived(
                "noise_bias",
                (noise, self.noise.weight, self.activate.bias),
                lambda: (
                    (noise * (self.noise.weight * SQRT2)).to(x.dtype),
                    (self.activate.bias * SQRT2).to(x.dtype),
                ),
                (x.dtype,),
            )
            return _FrozenStyledConv.apply(x, s * conv.scale, d2, conv, *terms)
        out, d = conv.forward_parts(x, latent)
        if d is None:
            return self.activate(self.noise(out, noise))
        # leaky_relu(z) * sqrt(2) == leaky_relu(sqrt(2) * z): the sqrt(2) rides on
        # the demodulation and the noise/bias terms, saving a pass over the output.
        dtype = out.dtype
        z = torch.addcmul(
            (self.noise.weight * SQRT2).to(dtype) * noise.to(dtype),
            out,
            (d * SQRT2)[:, :, None, None].to(dtype),
        )
        z = z.add_((self.activate.bias * SQRT2)[:, None, None].to(dtype))
        return F.leaky_relu_(z, 0.2)


def _dot_hw(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample, per-channel dot products over the pixels of two (N, C, H, W) tensors.

    Output: (N, C). Contiguous inputs go through one batched matmul, without
    a temporary the size of the inputs.
    """
    n, c, h, w = a.shape
    if a.is_contiguous() and b.is_contiguous():
        return torch.bmm(a.view(n * c, 1, h * w), b.view(n * c, h * w, 1)).view(n, c)
    return (a * b).sum((2, 3))


def _dot_map(a: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Dot products of every channel of a (N, C, H, W) with one (1, 1, H, W) map. Output: (N, C)."""
    n, c, h, w = a.shape
    m = m.reshape(h * w)
    if a.is_contiguous():
        return a.view(n, c, h * w) @ m
    if a.is_contiguous(memory_format=torch.channels_last):
        return (m @ a.permute(0, 2, 3, 1).reshape(n, h * w, c)).view(n, c)
    return (a * m.view(1, 1, h, w)).sum((2, 3))


class _FrozenStyledConv(torch.autograd.Function):
    """StyledConv with frozen weights: gradients for x, s and d only.

    Forward: ``a = leaky_relu(blur?(conv(x * s)) * d + noise_term + bias)``
    (d, noise_term and bias already carry the sqrt(2) gain). Only x, s, d and
    the output are kept for the backward pass; the pre-activation is
    recovered from the output, since ``z * leaky_relu'(z) = leaky_relu(z)``.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        s: torch.Tensor,
        d: torch.Tensor,
        conv: ModulatedConv2d,
        noise_term: torch.Tensor,
        bias: torch.Tensor,
    ) -> torch.Tensor:
        out = conv.frozen_forward(x, s, d, bias)
        out.add_(noise_term)
        F.leaky_relu_(out, 0.2)
        ctx.conv = conv
        ctx.save_for_backward(x, s, d, noise_term, bias, out)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        x, s, d, noise_term, bias, out = ctx.saved_tensors
        ga = torch.ops.aten.leaky_relu_backward(grad, out, 0.2, True)
        # dL/dd = sum(ga * z_conv) with z_conv = (z - noise_term - bias) / d, and
        # sum(ga * z) = sum(grad * out) because z * leaky_relu'(z) = leaky_relu(z)
        grad_d = (_dot_hw(grad, out) - _dot_map(ga, noise_term) - ga.sum((2, 3)) * bias) / d
        gx = ctx.conv.frozen_backward(ga, x, d)
        del ga
        grad_s = _dot_hw(gx, x)
        grad_x = gx.mul_(s[:, :, None, None]) if ctx.needs_input_grad[0] else None
        return grad_x, grad_s, grad_d, None, None, None


class ToRGB(nn.Module):
    """1x1 modulated convolution to RGB (no demodulation), plus the up-sampled skip.

    Input: (N, C, H, W), a latent (N, style_dim), and the previous RGB image
    (N, 3, H/2, W/2) or None. Output: (N, 3, H, W).
    """

    def __init__(
        self,
        in_channel: int,
        style_dim: int,
        *,
        upsample: bool = True,
        blur_kernel: Sequence[float] = BLUR_KERNEL,
    ) -> None:
        super().__init__()
        if upsample:
            self.upsample = Upsample(blur_kernel)
        self.conv = ModulatedConv2d(in_channel, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(
        self, x: torch.Tensor, latent: torch.Tensor, skip: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.conv.fast:
            out = self._rgb_fast(x, latent)
        else:
            out = self.conv(x, latent) + self.bias.to(x.dtype)
        if skip is not None:
            out = out + self.upsample(skip)
        return out

    def _rgb_fast(self, x: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        # With 3 output channels it is cheaper to modulate the tiny weight than
        # the activations: out = (w * s) @ x, one batched matmul.
        s = self.conv.modulation(latent)
        weight = self.conv.derived(
            "rgb_weight",
            (self.conv.weight,),
            lambda: self.conv.weight[0, :, :, 0, 0] * self.conv.scale,
        )
        ws = (weight[None] * s[:, None, :]).to(x.dtype)  # (N, 3, C)
        return torch.einsum("noc,nchw->nohw", ws, x) + self.bias.to(x.dtype)


class StyleGAN2Generator(nn.Module):
    """rosinality-compatible StyleGAN2 generator for W+ editing.

    Args:
        size: output resolution, a power of two >= 8.
        style_dim: latent size D (512 in the released models).
        n_mlp: number of mapping-network layers (8 in the released models).
        channel_multiplier: 2 for the released models, 1 for some small ones.
        blur_kernel: the FIR taps of up-sampling and blur.
        lr_mlp: learning-rate multiplier of the mapping network.
        init: False leaves weights and noise maps uninitialized (``torch.empty``),
            which is quicker when a state dict is loaded right after.

    ``synthesize`` takes W+ latents (N, L, D) with L = :attr:`num_layers` =
    2 * log2(size) - 2 and returns images (N, 3, size, size), roughly in
    [-1, 1], using the fixed noise maps stored in the checkpoint.
    """

    def __init__(
        self,
        size: int = 256,
        style_dim: int = 512,
        n_mlp: int = 8,
        channel_multiplier: int = 2,
        *,
        blur_kernel: Sequence[float] = BLUR_KERNEL,
        lr_mlp: float = 0.01,
        init: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(size, int) or size < 8 or size & (size - 1):
            raise ConfigError(f"StyleGAN2 size must be a power of two >= 8, got {size!r}")
        if not isinstance(channel_multiplier, int) or channel_multiplier < 1:
            raise ConfigError(
                f"channel_multiplier must be a positive integer, got {channel_multiplier!r}"
            )
        if style_dim < 1 or n_mlp < 0:
            raise ConfigError(f"need style_dim >= 1 and n_mlp >= 0, got {style_dim} and {n_mlp}")
        self._size = size
        self._style_dim = style_dim
        self._n_mlp = n_mlp
        self._channel_multiplier = channel_multiplier
        self.log_size = int(math.log2(size))
        self.latent_avg: torch.Tensor | None = None
        """(1, style_dim) average W stored with converted checkpoints, else None."""
        self.channels_last = False
        """Run the synthesis network in channels-last memory format."""
        with nullcontext() if init else _skip_init():
            self._build(blur_kernel, lr_mlp)

    def _build(self, blur_kernel: Sequence[float], lr_mlp: float) -> None:
        style_dim, channel_multiplier = self.style_dim, self.channel_multiplier
        self.style = nn.Sequential(
            PixelNorm(),
            *(
                EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activation=True)
                for _ in range(self.n_mlp)
            ),
        )
        c4 = channels_at(4, channel_multiplier)
        self.input = ConstantInput(c4)
        self.conv1 = StyledConv(c4, c4, 3, style_dim, blur_kernel=blur_kernel)
        self.to_rgb1 = ToRGB(c4, style_dim, upsample=False)
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        num_noise = 2 * (self.log_size - 2) + 1
        for i in range(num_noise):
            res = 2 ** ((i + 5) // 2)
            self.noises.register_buffer(f"noise_{i}", _randn(1, 1, res, res))
        in_channel = c4
        for i in range(3, self.log_size + 1):
            out_channel = channels_at(2**i, channel_multiplier)
            self.convs.append(
                StyledConv(
                    in_channel, out_channel, 3, style_dim, upsample=True, blur_kernel=blur_kernel
                )
            )
            self.convs.append(StyledConv(out_channel, out_channel, 3, style_dim))
            self.to_rgbs.append(ToRGB(out_channel, style_dim, blur_kernel=blur_kernel))
            in_channel = out_channel

    # -- configuration ---------------------------------------------------------

    @property
    def size(self) -> int:
        """Output height and width in pixels."""
        return self._size

    @property
    def style_dim(self) -> int:
        """Latent size D."""
        return self._style_dim

    @property
    def n_mlp(self) -> int:
        """Number of mapping-network layers."""
        return self._n_mlp

    @property
    def channel_multiplier(self) -> int:
        return self._channel_multiplier

    @property
    def num_layers(self) -> int:
        """Number of W+ latent vectors: 2 * log2(size) - 2 (14 at 256 px, 18 at 1024 px)."""
        return 2 * self.log_size - 2

    @property
    def winograd(self) -> bool:
        """Use Winograd convolutions for the wide 3x3 layers on CPU (default True).

        About 14 % faster forward+backward at 256 px on a 2-core CPU, for 47 MB
        of cached transformed weights (4x the weights of the 3x3 layers at 64
        and 128 px). The ``stylegan2`` plugin's ``winograd = false`` turns it
        off for low-memory runs.
        """
        return self.conv1.conv.winograd

    @winograd.setter
    def winograd(self, value: bool) -> None:
        for module in self.modules():
            if isinstance(module, ModulatedConv2d):
                module.winograd = bool(value)

    @property
    def fast(self) -> bool:
        """True (default): modulated activations and cached weights; False: textbook path."""
        return self.conv1.conv.fast

    @fast.setter
    def fast(self, value: bool) -> None:
        for module in self.modules():
            if isinstance(module, ModulatedConv2d):
                module.fast = bool(value)

    def extra_repr(self) -> str:
        return (
            f"size={self.size}, style_dim={self.style_dim}, n_mlp={self.n_mlp}, "
            f"channel_multiplier={self.channel_multiplier}"
        )

    def clear_cache(self) -> None:
        """Drop all cached derived tensors (they are rebuilt on the next call)."""
        for module in self.modules():
            if isinstance(module, _Derived):
                module.clear_derived()

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> StyleGAN2Generator:
        # .to() / .float() / .cuda() etc.: move latent_avg along, drop caches.
        super()._apply(fn, *args, **kwargs)
        if self.latent_avg is not None:
            self.latent_avg = fn(self.latent_avg)
        self.clear_cache()
        return self

    # -- latents ---------------------------------------------------------------

    def _param(self) -> torch.Tensor:
        return self.input.input

    def mapping(self, z: torch.Tensor) -> torch.Tensor:
        """The mapping network (PixelNorm + MLP). Input: z (N, D). Output: w (N, D)."""
        if not isinstance(z, torch.Tensor) or z.ndim != 2 or z.shape[1] != self.style_dim:
            raise LatentShapeError(
                f"mapping expects z of shape (n, {self.style_dim}), got {_shape_of(z)}"
            )
        return self.style(z)

    @torch.no_grad()
    def mean_latent(
        self, n_samples: int = 4096, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Mean of ``mapping(z)`` over ``n_samples`` random z. Output: (1, D)."""
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        p = self._param()
        z = torch.randn(n_samples, self.style_dim, generator=generator, device=p.device)
        return self.style(z.to(p.dtype)).mean(0, keepdim=True)

    @staticmethod
    def truncate(
        w: torch.Tensor, truncation: float | torch.Tensor, target: torch.Tensor
    ) -> torch.Tensor:
        """``target + truncation * (w - target)``; ``target`` broadcasts against ``w``."""
        # checked by hand: torch.broadcast_shapes imports torch._refs and sympy (150 MB)
        pairs = zip(reversed(w.shape), reversed(target.shape), strict=False)
        if any(a != b and 1 not in (a, b) for a, b in pairs):
            raise LatentShapeError(
                f"truncation target of shape {tuple(target.shape)} does not broadcast "
                f"to the latent's shape {tuple(w.shape)}"
            )
        return target + truncation * (w - target)

    # -- synthesis -------------------------------------------------------------

    def noise_maps(self) -> list[torch.Tensor]:
        """The fixed noise buffers ``noises.noise_i``, each (1, 1, r, r)."""
        return [getattr(self.noises, f"noise_{i}") for i in range(2 * (self.log_size - 2) + 1)]

    def check_wplus(self, wplus: torch.Tensor) -> None:
        """Raise :class:`LatentShapeError` unless ``wplus`` is a (N, L, D) float tensor."""
        expected = (self.num_layers, self.style_dim)
        if (
            not isinstance(wplus, torch.Tensor)
            or wplus.ndim != 3
            or tuple(wplus.shape[1:]) != expected
        ):
            raise LatentShapeError(
                f"expected a W+ latent of shape (n, {expected[0]}, {expected[1]}) for this "
                f"{self.size} px generator, got {_shape_of(wplus)}"
            )
        if not wplus.is_floating_point():
            raise LatentShapeError(f"W+ latent must be a float tensor, got {wplus.dtype}")
        if wplus.shape[0] == 0:
            raise LatentShapeError("W+ latent has an empty batch (shape (0, ...))")
        device = self._param().device
        if wplus.device != device:
            raise LatentError(
                f"W+ latent is on {wplus.device} but the generator is on {device}",
                hint="move one of them with .to(device)",
            )

    def synthesize(self, wplus: torch.Tensor, *, precision: Precision = "fp32") -> torch.Tensor:
        """Render W+ latents with the stored noise maps (deterministic).

        Input: (N, L, D) on the generator's device (converted to its dtype).
        Output: (N, 3, size, size) in the generator's dtype, also for
        ``precision="bf16"``, which runs the network under bfloat16 autocast:
        faster on GPUs and CPUs with bf16 units, less exact, and far slower
        than fp32 on CPUs without them (a RuntimeWarning says so).
        """
        self.check_wplus(wplus)
        wplus = wplus.to(self._param().dtype)
        if precision not in ("fp32", "bf16"):
            raise ConfigError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
        if precision == "bf16":
            _warn_if_slow_bf16(wplus.device)
            with torch.autocast(wplus.device.type, dtype=torch.bfloat16):
                image = self._synthesize(wplus)
            return image.to(wplus.dtype)
        return self._synthesize(wplus)

    forward = synthesize

    def _synthesize(self, wplus: torch.Tensor) -> torch.Tensor:
        noise = self.noise_maps()
        x = self.input(wplus.shape[0])
        if self.channels_last and self.fast:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.conv1(x, wplus[:, 0], noise[0])
        skip = self.to_rgb1(x, wplus[:, 1])
        i = 1
        for k, to_rgb in enumerate(self.to_rgbs):
            x = self.convs[2 * k](x, wplus[:, i], noise[2 * k + 1])
            x = self.convs[2 * k + 1](x, wplus[:, i + 1], noise[2 * k + 2])
            skip = to_rgb(x, wplus[:, i + 2], skip)
            i += 2
        return skip.contiguous()


@functools.cache
def _warn_if_slow_bf16(device: torch.device) -> None:
    try:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        native = True
    if device.type == "cpu" and not native:
        warnings.warn(
            "precision='bf16' on a CPU without native bfloat16 support runs convolutions "
            "in slow reference kernels (far slower than fp32); use fp32 here",
            RuntimeWarning,
            stacklevel=3,
        )


def _shape_of(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return str(tuple(x.shape))
    return type(x).__name__


# -- checkpoints -------------------------------------------------------------------

_REQUIRED_KEYS = (
    "input.input",
    "conv1.conv.weight",
    "conv1.conv.modulation.weight",
    "to_rgb1.conv.weight",
)


def _generator_state_dict(obj: Any) -> tuple[Mapping[str, torch.Tensor], torch.Tensor | None]:
    """Find the generator state dict (and latent_avg) in a loaded checkpoint."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"not a StyleGAN2 checkpoint: expected a dict, got {type(obj).__name__}"
        )
    latent_avg = obj.get("latent_avg")
    if "g_ema" in obj:
        state = obj["g_ema"]
    elif "input.input" in obj or "conv1.conv.weight" in obj:
        state = obj
    elif "g" in obj and isinstance(obj["g"], Mapping):
        state = obj["g"]
    else:
        found = ", ".join(repr(k) for k in list(obj)[:5]) or "none"
        raise CheckpointError(
            f"not a StyleGAN2 checkpoint: no 'g_ema' entry and no generator key 'input.input' "
            f"(top-level keys: {found})"
        )
    if not isinstance(state, Mapping):
        raise CheckpointError(
            f"not a StyleGAN2 checkpoint: 'g_ema' is a {type(state).__name__}, not a state dict"
        )
    for key in _REQUIRED_KEYS:
        if key not in state or not isinstance(state[key], torch.Tensor):
            found = ", ".join(repr(k) for k in list(state)[:3]) or "none"
            raise CheckpointError(
                f"not a StyleGAN2 generator state dict: key {key!r} is missing (keys start {found})"
            )
    if latent_avg is not None and not isinstance(latent_avg, torch.Tensor):
        latent_avg = None
    return state, latent_avg


def infer_stylegan2_config(state: Mapping[str, torch.Tensor]) -> dict[str, int | None]:
    """Read size, style_dim, n_mlp and channel_multiplier off tensor shapes.

    ``channel_multiplier`` is None for generators of 32 px or less, where no
    layer's width depends on it.
    """
    conv_ids = {int(m.group(1)) for k in state if (m := re.match(r"convs\.(\d+)\.", k))}
    n_convs = max(conv_ids) + 1 if conv_ids else 0
    mlp_ids = {int(m.group(1)) for k in state if (m := re.fullmatch(r"style\.(\d+)\.weight", k))}
    style_dim = int(state["conv1.conv.modulation.weight"].shape[1])
    size = 2 ** (n_convs // 2 + 2)
    cm: int | None = None
    for i in range(3, n_convs // 2 + 3):
        res = 2**i
        if res <= 32:
            continue
        key = f"convs.{2 * (i - 3)}.conv.weight"
        if key in state:
            out_channel = int(state[key].shape[1])
            cm = max(1, round(out_channel * res / 16384))
        break
    return {
        "size": size,
        "style_dim": style_dim,
        "n_mlp": max(mlp_ids) if mlp_ids else 0,
        "channel_multiplier": cm,
    }


def load_stylegan2(
    path_or_state_dict: str | Any,
    *,
    size: int | None = None,
    channel_multiplier: int | None = None,
    n_mlp: int | None = None,
    style_dim: int | None = None,
    trust: bool = False,
) -> StyleGAN2Generator:
    """Build a :class:`StyleGAN2Generator` from a rosinality-format checkpoint.

    Accepts a path (read with :func:`soundguide.core.checkpoints.load_checkpoint`),
    a full training checkpoint (``g_ema``, ``g``, ``d``, optimizer states,
    ``args``), a converted one (``g_ema`` + ``latent_avg``) or a bare generator
    state dict. Settings left as None are read off the tensor shapes; given
    ones must match. The returned generator is in eval mode with every
    parameter frozen (``requires_grad=False``); ``latent_avg`` is (1, D) or None.

    Raises :class:`CheckpointError` when the file is not a StyleGAN2 generator
    or disagrees with the given settings.
    """
    from soundguide.core.checkpoints import read_checkpoint
    from soundguide.core.memory import file_mappings, release_pages

    from_file = not isinstance(path_or_state_dict, Mapping)
    # a file is memory-mapped: the generator's weights are copied out of it
    # (the module's own memory, which page-out cannot take back), and the rest
    # of a training checkpoint (discriminator, optimizer states) is never read
    source, obj = read_checkpoint(path_or_state_dict, trust=trust, mmap=from_file)
    state, latent_avg = _generator_state_dict(obj)
    found = infer_stylegan2_config(state)
    layers = 2 * int(math.log2(found["size"] or 8)) - 2

    def mismatch(what: str, want: Any) -> CheckpointError:
        return CheckpointError(
            f"checkpoint {what}, config says {want}",
            hint="leave the setting unset to read it from the checkpoint",
        )

    if size is not None and size != found["size"]:
        raise mismatch(f"is {found['size']} px ({layers} layers)", size)
    if style_dim is not None and style_dim != found["style_dim"]:
        raise mismatch(f"has style_dim {found['style_dim']}", style_dim)
    if n_mlp is not None and n_mlp != found["n_mlp"]:
        raise mismatch(f"has {found['n_mlp']} mapping layers (n_mlp)", n_mlp)
    cm = found["channel_multiplier"]
    if channel_multiplier is not None and cm is not None and channel_multiplier != cm:
        raise mismatch(f"has channel multiplier {cm}", channel_multiplier)
    if cm is None:
        cm = channel_multiplier if channel_multiplier is not None else 2

    try:
        generator = StyleGAN2Generator(
            int(found["size"]), int(found["style_dim"]), int(found["n_mlp"]), int(cm), init=False
        )
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint describes an unsupported generator: {exc}") from None
    _check_state_dict(generator, state, found, source)
    device = state["input.input"].device
    generator.to(device=device).load_state_dict(state, strict=True)
    if from_file:  # copied: the mapped file's pages may go now, not when it is unmapped
        mappings = file_mappings()
        for tensor in state.values():
            release_pages(tensor, mappings)
    generator.requires_grad_(False).eval()
    if latent_avg is not None:
        if latent_avg.numel() != generator.style_dim:
            raise CheckpointError(
                f"checkpoint's latent_avg has {latent_avg.numel()} values, expected "
                f"style_dim = {generator.style_dim}"
            )
        generator.latent_avg = (
            latent_avg.detach().reshape(1, -1).to(device=device, dtype=generator.input.input.dtype)
        )
    return generator


def _check_state_dict(
    generator: StyleGAN2Generator,
    state: Mapping[str, torch.Tensor],
    found: Mapping[str, Any],
    source: str,
) -> None:
    from soundguide.core.checkpoints import check_state_dict

    looks = (
        f"{found['size']} px, style_dim {found['style_dim']}, n_mlp {found['n_mlp']}, "
        f"channel multiplier {generator.channel_multiplier}"
    )
    check_state_dict(
        generator.state_dict(), state, source=source, what=f"StyleGAN2 (it looks like {looks})"
    )
