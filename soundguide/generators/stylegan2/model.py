"""StyleGAN2's generator as rosinality's ``stylegan2-pytorch`` builds it: the specification.

Mapping MLP, constant 4x4 input, modulated 3x3 convolutions with
demodulation, [1, 3, 3, 1] FIR up-sampling, noise injection and
skip-connected ToRGB layers, with the module and parameter names of
rosinality's checkpoints, so the state dict of a checkpoint's ``g_ema``
loads as it is (keys and shapes: ``tests/data/stylegan2_*_cm2.keys.json``;
reading files: :mod:`.checkpoint`).

Every forward below is the textbook formulation (per-sample modulated
weights, one grouped convolution). ``ModulatedConv2d``, ``StyledConv`` and
``ToRGB`` hand their work to :mod:`.ops.modulated` while their ``fast`` flag
is set (the default): the same function in fewer passes, with an autograd
Function for frozen weights, Winograd convolutions and cached derived
weights. ``StyleGAN2Generator.fast = False`` runs this file alone; the tests
hold the two routes, and both against an independent copy of rosinality's
code, to each other.
"""

from __future__ import annotations

import contextvars
import functools
import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

from soundguide.core.errors import ConfigError, LatentError

from .ops import cache, modulated
from .ops.upfirdn2d import upfirdn2d

__all__ = [
    "LatentShapeError",
    "ModulatedConv2d",
    "StyleGAN2Generator",
    "StyledConv",
    "ToRGB",
    "channels_at",
    "make_kernel",
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
        # copy of the weight is made (17 MB over a 256 px generator)
        bias = self.bias * self.lr_mul
        if x.dim() == 2:
            out = torch.addmm(bias.to(x.dtype), x, self.weight.t().to(x.dtype), alpha=self.scale)
        else:
            out = F.linear(x, self.weight * self.scale, bias)
        return F.leaky_relu(out, 0.2) * SQRT2 if self.activation else out


class ConstantInput(nn.Module):
    """The learned 4x4 input. Output: (N, C, 4, 4), the (1, C, 4, 4) parameter expanded."""

    def __init__(self, channel: int, size: int = 4) -> None:
        super().__init__()
        self.input = nn.Parameter(_randn(1, channel, size, size))

    def forward(self, batch: int) -> torch.Tensor:
        return self.input.expand(batch, -1, -1, -1)


class Blur(nn.Module):
    """FIR low-pass ``kernel`` with padding ``pad``, one channel at a time.

    Input: (N, C, H, W). Output: (N, C, H + p0 + p1 - K + 1, W + p0 + p1 - K + 1).
    """

    def __init__(
        self, kernel: Sequence[float], pad: tuple[int, int], upsample_factor: int = 1
    ) -> None:
        super().__init__()
        self.register_buffer("kernel", make_kernel(kernel) * upsample_factor**2)
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, pad=self.pad)


class Upsample(nn.Module):
    """2x FIR up-sampling: zero insertion, then ``kernel`` times 4.

    Input: (N, C, H, W). Output: (N, C, 2H, 2W).
    """

    def __init__(self, kernel: Sequence[float], factor: int = 2) -> None:
        super().__init__()
        self.factor = factor
        k = make_kernel(kernel) * factor**2
        self.register_buffer("kernel", k)
        p = k.shape[0] - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, up=self.factor, pad=self.pad)


class ModulatedConv2d(nn.Module):
    """Convolution whose input channels are scaled by a style, then demodulated.

    Input: x (N, C_in, H, W) and a latent (N, style_dim). Output: (N, C_out,
    H, W), or (N, C_out, 2H, 2W) with ``upsample`` (transposed convolution,
    stride 2, then a [1, 3, 3, 1] blur).

    ``fast`` (default True): :func:`.ops.modulated.modulated_conv2d` computes
    the forward, and the ``StyledConv`` and ``ToRGB`` around this layer take
    their fast routes too. ``winograd`` (default True): the frozen route may
    run this layer as a Winograd convolution on CPU.
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
            # view is then contiguous, and the fast route never copies it;
            # load_state_dict and .to() keep the layout, the shape and key are unchanged
            weight = weight.transpose(1, 2).contiguous().transpose(1, 2)
        self.weight = nn.Parameter(weight)
        self.modulation = EqualLinear(style_dim, in_channel, bias_init=1.0)

    def forward(self, x: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        if self.fast:
            return modulated.modulated_conv2d(self, x, latent)
        # per-sample weights w * s, demodulated, as one grouped convolution
        n, c_in, h, w = x.shape
        k = self.kernel_size
        s = self.modulation(latent)
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
    """Adds ``weight * noise``: a fixed buffer of the generator, or a map given to ``synthesize``.

    Input: x (N, C, H, W), noise (1 or N, 1, H, W). Output: (N, C, H, W).
    """

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
    (1 or N, 1, H', W'). Output: (N, C_out, H', W') with H' = H or 2H.
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
        if self.conv.fast:
            return modulated.styled_conv(self, x, latent, noise)
        return self.activate(self.noise(self.conv(x, latent), noise))


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
            return modulated.to_rgb(self, x, latent, skip)
        out = self.conv(x, latent) + self.bias.to(x.dtype)
        if skip is not None:
            out = out + self.upsample(skip)
        return out


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
    [-1, 1], using the fixed noise maps stored in the checkpoint, or the
    maps it is given (projection tunes them).
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
        # (1, style_dim) average W stored with converted checkpoints, else None; a
        # buffer, so .to() moves it, but no state-dict entry (not in the key contract)
        self.register_buffer("latent_avg", None, persistent=False)
        self.channels_last = False
        """Run the synthesis network in channels-last memory format (fast route only)."""
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

        Faster passes for 47 MB of cached transformed weights at 256 px (4x
        the weights of the 3x3 layers at 64 and 128 px); the README and
        ``benchmarks/stylegan2_speed.py`` give measured speeds. The
        ``stylegan2`` plugin's ``winograd = false`` turns it off for
        low-memory runs.
        """
        return self.conv1.conv.winograd

    @winograd.setter
    def winograd(self, value: bool) -> None:
        for module in self.modules():
            if isinstance(module, ModulatedConv2d):
                module.winograd = bool(value)

    @property
    def fast(self) -> bool:
        """True (default): the routes of :mod:`.ops.modulated`; False: the textbook forwards."""
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
        """Drop the fast routes' derived tensors now (they are rebuilt when next needed).

        Never needed for correct results: they are rebuilt whenever the
        weights they come from change, and dropped when those are freed.
        """
        for module in self.modules():
            cache.clear(module)

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

    @property
    def num_noise(self) -> int:
        """Number of noise maps: one per styled convolution, 2 * log2(size) - 3."""
        return 2 * (self.log_size - 2) + 1

    def noise_maps(self) -> list[torch.Tensor]:
        """The fixed noise buffers ``noises.noise_i``, each (1, 1, r, r)."""
        return [getattr(self.noises, f"noise_{i}") for i in range(self.num_noise)]

    def check_noise(self, noise: Sequence[torch.Tensor], batch: int | None = None) -> None:
        """Raise :class:`LatentShapeError` unless ``noise`` can replace :meth:`noise_maps`.

        One float map per styled convolution, each (1, 1, r, r) or (``batch``,
        1, r, r) with r the resolution of its layer (4, 8, 8, 16, 16, ...),
        on the generator's device. ``batch`` None accepts any batch.
        """
        fixed = self.noise_maps()
        if isinstance(noise, torch.Tensor) or not isinstance(noise, Sequence):
            raise LatentShapeError(
                f"noise must be a list of {len(fixed)} maps, got {type(noise).__name__}"
            )
        if len(noise) != len(fixed):
            raise LatentShapeError(
                f"this {self.size} px generator takes {len(fixed)} noise maps, got {len(noise)}"
            )
        device = self._param().device
        for i, (map_, ref) in enumerate(zip(noise, fixed, strict=True)):
            r = ref.shape[-1]
            if (
                not isinstance(map_, torch.Tensor)
                or map_.ndim != 4
                or tuple(map_.shape[1:]) != (1, r, r)
                or (batch is not None and map_.shape[0] not in (1, batch))
                or map_.shape[0] == 0
            ):
                n = "n" if batch is None else f"1 or {batch}"
                raise LatentShapeError(
                    f"noise map {i} must have shape ({n}, 1, {r}, {r}), got {_shape_of(map_)}"
                )
            if not map_.is_floating_point():
                raise LatentShapeError(f"noise map {i} must be a float tensor, got {map_.dtype}")
            if map_.device != device:
                raise LatentError(
                    f"noise map {i} is on {map_.device} but the generator is on {device}",
                    hint="move one of them with .to(device)",
                )

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

    def synthesize(
        self,
        wplus: torch.Tensor,
        *,
        noise: Sequence[torch.Tensor] | None = None,
        precision: Precision = "fp32",
    ) -> torch.Tensor:
        """Render W+ latents (deterministic).

        Input: (N, L, D) on the generator's device (converted to its dtype).
        ``noise``: None for the stored noise maps, or one map per styled
        convolution (:meth:`check_noise`), each (1, 1, r, r) shared by the
        batch or (N, 1, r, r) one per image; maps that require grad get
        gradients. Output: (N, 3, size, size) in the generator's dtype, also
        for ``precision="bf16"``, which runs the network under bfloat16
        autocast: faster on GPUs and CPUs with bf16 units, less exact, and far
        slower than fp32 on CPUs without them (a RuntimeWarning says so).
        """
        self.check_wplus(wplus)
        dtype = self._param().dtype
        wplus = wplus.to(dtype)
        if noise is None:
            maps = self.noise_maps()
        else:
            self.check_noise(noise, wplus.shape[0])
            maps = [m.to(dtype) for m in noise]
        if precision not in ("fp32", "bf16"):
            raise ConfigError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
        if precision == "bf16":
            _warn_if_slow_bf16(wplus.device)
            with torch.autocast(wplus.device.type, dtype=torch.bfloat16):
                image = self._synthesize(wplus, maps)
            return image.to(wplus.dtype)
        return self._synthesize(wplus, maps)

    forward = synthesize

    def _synthesize(self, wplus: torch.Tensor, noise: Sequence[torch.Tensor]) -> torch.Tensor:
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
