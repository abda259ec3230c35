"""StyleGAN2 generator that loads rosinality-format checkpoints, in pure PyTorch.

The architecture is the one of rosinality's ``stylegan2-pytorch`` (mapping MLP,
constant input, modulated 3x3 convolutions with demodulation, [1, 3, 3, 1] FIR
up-sampling, noise injection, skip-connected ToRGB layers), so the state dict
of a checkpoint's ``g_ema`` loads as it is.

It is written for latent optimization, where the generator is frozen and the
gradient is taken with respect to W+ only:

* the style scales the *activations* (``conv(x * s) * d``) instead of the
  weights; mathematically the same as ``conv(x, w * s) * d``, but backprop to
  the latent needs no per-layer weight gradient;
* demodulation coefficients come from a cached ``(w ** 2).sum((kh, kw))``
  matrix: ``d = rsqrt(s ** 2 @ wsq.T + 1e-8)``;
* FIR filters are depthwise convolutions, and the 2x FIR up-sampling of the
  RGB skip is a depthwise transposed convolution;
* equalized-learning-rate weights (``weight * scale``) and other derived
  tensors are computed once and cached until their source tensors change
  (new data, in-place update, ``load_state_dict``, ``.to()``); they are plain
  attributes, never state-dict entries.

``fast=False`` on the generator switches every layer to the textbook
formulation (per-sample modulated weights, grouped convolutions), kept as a
readable specification and a check of the fast path.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
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
    (training), nothing is cached so autograd sees the computation.
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
        if (torch.is_grad_enabled() and any(t.requires_grad for t in sources)) or (
            torch.compiler.is_compiling()
        ):
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


class EqualLinear(_Derived):
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
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activation = activation

    def effective(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The weight and bias actually applied: (out_dim, in_dim), (out_dim,)."""
        return self.derived(
            "effective",
            (self.weight, self.bias),
            lambda: (self.weight * self.scale, self.bias * self.lr_mul),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.effective()
        if self.activation:
            return F.leaky_relu(F.linear(x, weight) + bias, 0.2) * SQRT2
        return F.linear(x, weight, bias)


class ConstantInput(nn.Module):
    """The learned 4x4 input. Output: (1, C, 4, 4) expanded to the batch."""

    def __init__(self, channel: int, size: int = 4) -> None:
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channel, size, size))

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        p0, p1 = self.pad
        if p0 == p1 and p0 >= 0:
            return F.conv2d(x, self.depthwise(c, x), padding=p0, groups=c)
        return F.conv2d(F.pad(x, (p0, p1, p0, p1)), self.depthwise(c, x), groups=c)


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
        if upsample:
            factor = 2
            p = (len(blur_kernel) - factor) - (kernel_size - 1)
            self.blur = Blur(
                blur_kernel, pad=((p + 1) // 2 + factor - 1, p // 2 + 1), upsample_factor=factor
            )
        self.scale = 1 / math.sqrt(in_channel * kernel_size**2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(
            torch.randn(1, out_channel, in_channel, kernel_size, kernel_size)
        )
        self.modulation = EqualLinear(style_dim, in_channel, bias_init=1.0)

    def conv_weight(self, x: torch.Tensor) -> torch.Tensor:
        """The scaled weight in the layout the convolution wants.

        (C_out, C_in, k, k), or (C_in, C_out, k, k) for the transposed
        convolution; channels-last when ``x`` is.
        """
        channels_last = x.is_contiguous(memory_format=torch.channels_last)

        def build() -> torch.Tensor:
            w = self.weight[0] * self.scale
            if self.upsample:
                w = w.transpose(0, 1)
            w = w.to(x.dtype)
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            return w.contiguous(memory_format=fmt)

        return self.derived("conv_weight", (self.weight,), build, (x.dtype, channels_last))

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
        xs = x * s[:, :, None, None].to(x.dtype)
        if self.upsample:
            out = self.blur(F.conv_transpose2d(xs, weight, stride=2))
        else:
            out = F.conv2d(xs, weight, padding=self.padding)
        return out, (self.demodulation(s) if self.demodulate else None)

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

    def forward(self, x: torch.Tensor, latent: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        out, d = self.conv.forward_parts(x, latent)
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

        self.style = nn.Sequential(
            PixelNorm(),
            *(
                EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activation=True)
                for _ in range(n_mlp)
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
            self.noises.register_buffer(f"noise_{i}", torch.randn(1, 1, res, res))
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
        self.channels_last = False
        """Run the synthesis network in channels-last memory format."""

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
        try:
            torch.broadcast_shapes(w.shape, target.shape)
        except RuntimeError:
            raise LatentShapeError(
                f"truncation target of shape {tuple(target.shape)} does not broadcast "
                f"to the latent's shape {tuple(w.shape)}"
            ) from None
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

    def synthesize(self, wplus: torch.Tensor, *, precision: Precision = "fp32") -> torch.Tensor:
        """Render W+ latents with the stored noise maps (deterministic).

        Input: (N, L, D). Output: (N, 3, size, size), in the latent's dtype
        (float32 for ``precision="bf16"``, which runs the network under
        bfloat16 autocast: faster on CPUs and GPUs with bf16 units, less exact).
        """
        self.check_wplus(wplus)
        if precision not in ("fp32", "bf16"):
            raise ConfigError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
        if precision == "bf16":
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
    if isinstance(path_or_state_dict, Mapping):
        obj: Any = path_or_state_dict
    else:
        from soundguide.core.checkpoints import load_checkpoint

        obj = load_checkpoint(path_or_state_dict, trust=trust)
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
        with torch.device("meta"):
            generator = StyleGAN2Generator(
                int(found["size"]), int(found["style_dim"]), int(found["n_mlp"]), int(cm)
            )
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint describes an unsupported generator: {exc}") from None
    _check_state_dict(generator, state, found)
    device = state["input.input"].device
    generator.to_empty(device=device)
    generator.load_state_dict(state, strict=True)
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
    generator: StyleGAN2Generator, state: Mapping[str, torch.Tensor], found: Mapping[str, Any]
) -> None:
    expected = generator.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    looks = (
        f"{found['size']} px, style_dim {found['style_dim']}, n_mlp {found['n_mlp']}, "
        f"channel multiplier {generator.channel_multiplier}"
    )
    problems = []
    if missing:
        problems.append(f"missing {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected {_few(unexpected)}")
    if wrong:
        problems.append(f"wrong shape {_few(wrong)}")
    if problems:
        raise CheckpointError(
            f"StyleGAN2 checkpoint (looks like {looks}) does not load: {'; '.join(problems)}"
        )


def _few(items: Sequence[str], n: int = 3) -> str:
    text = ", ".join(items[:n])
    return text + (f" and {len(items) - n} more" if len(items) > n else "")
