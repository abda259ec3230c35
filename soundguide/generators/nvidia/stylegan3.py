"""NVIDIA's StyleGAN3 generator (configs T and R) in pure PyTorch: the specification.

``Generator`` = ``MappingNetwork`` (z -> w, truncation towards ``w_avg``) +
``SynthesisNetwork``: ``SynthesisInput`` (Fourier features, turned by a learned
rotation/translation from ``ws[0]`` and by the user's ``transform`` buffer),
``num_layers`` ``SynthesisLayer``\\ s (modulated convolution, then a filtered leaky
ReLU: upsample with ``up_filter``, bias, leaky ReLU, clamp, downsample with
``down_filter``) and a final ToRGB layer. Config R uses 1x1 convolutions and
radially symmetric (jinc) downsampling filters in the non-critical layers.

Everything runs as NVIDIA's reference ops (``_filtered_lrelu_ref``,
``_upfirdn2d_ref``, ``bias_act`` with ``impl='ref'``) define it, in float32;
the functions below are those ops, the specification. The synthesis layers
run the faster equivalents of :mod:`.ops` unless their ``fast`` switch is off
(:meth:`StyleGAN3Generator.set_fast`). Float32 throughout:
layers NVIDIA runs in float16 on CUDA (``num_fp16_res``) are computed in float32
here, which is what NVIDIA's code does on the CPU.

The module and attribute names below (``mapping``, ``fc0``, ``embed``,
``w_avg``, ``synthesis``, ``input``, ``affine``, ``transform``, ``freqs``,
``phases``, ``L{idx}_{size}_{channels}``, ``weight``, ``bias``,
``magnitude_ema``, ``up_filter``, ``down_filter``) are those of NVIDIA's
``training/networks_stylegan3.py``: the pickle's flattened state dict loads
with ``load_state_dict(strict=True)``. The low-pass filters are never designed
here: they are the pickle's buffers (zeros until loaded), so
:meth:`StyleGAN3Generator.from_persistent` is the way to build a usable one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from soundguide.core.errors import CheckpointError, LatentError, one_line
from soundguide.core.nvidia_pickle import ModuleRecord, PersistentObject

from . import ops

__all__ = [
    "FullyConnectedLayer",
    "MappingNetwork",
    "StyleGAN3Generator",
    "SynthesisInput",
    "SynthesisLayer",
    "SynthesisNetwork",
    "filtered_lrelu",
    "layer_specs",
    "make_transform",
    "modulated_conv2d",
    "upfirdn2d",
]

SQRT2 = math.sqrt(2.0)

# The options of NVIDIA's Generator / MappingNetwork / SynthesisNetwork /
# SynthesisLayer constructors this module implements; any other is refused.
GENERATOR_OPTIONS = frozenset(
    {"z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "mapping_kwargs"}
)
MAPPING_OPTIONS = frozenset({"num_layers", "lr_multiplier", "w_avg_beta"})
SYNTHESIS_OPTIONS = frozenset(
    {
        "channel_base",
        "channel_max",
        "num_layers",
        "num_critical",
        "first_cutoff",
        "first_stopband",
        "last_stopband_rel",
        "margin_size",
        "output_scale",
        "num_fp16_res",
        # SynthesisLayer's, passed through SynthesisNetwork's **layer_kwargs
        "conv_kernel",
        "filter_size",
        "lrelu_upsampling",
        "use_radial_filters",
        "conv_clamp",
        "magnitude_ema_beta",
    }
)


# -- the math ---------------------------------------------------------------------------


def modulated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    *,
    demodulate: bool,
    padding: int,
    input_gain: torch.Tensor | None = None,
) -> torch.Tensor:
    """StyleGAN3's modulated convolution: one grouped convolution per batch.

    Input: x (N, I, H, W), weight (O, I, k, k), styles (N, I), input_gain ()
    or (I,). Output: (N, O, H + 2 * padding - k + 1, W + 2 * padding - k + 1).
    With ``demodulate``, weight and styles are first normalized to unit RMS
    (a float16 safeguard in NVIDIA's code that changes nothing after
    demodulation but the rounding).
    """
    batch = x.shape[0]
    out_channels, in_channels, kh, kw = weight.shape
    if demodulate:
        weight = weight * weight.square().mean([1, 2, 3], keepdim=True).rsqrt()
        styles = styles * styles.square().mean().rsqrt()
    w = weight.unsqueeze(0) * styles[:, None, :, None, None]  # (N, O, I, k, k)
    if demodulate:
        w = w * (w.square().sum(dim=[2, 3, 4], keepdim=True) + 1e-8).rsqrt()
    if input_gain is not None:
        w = w * input_gain.expand(batch, in_channels)[:, None, :, None, None]
    x = x.reshape(1, batch * in_channels, *x.shape[2:])
    x = F.conv2d(
        x, w.reshape(batch * out_channels, in_channels, kh, kw), padding=padding, groups=batch
    )
    return x.reshape(batch, out_channels, *x.shape[2:])


def upfirdn2d(
    x: torch.Tensor,
    f: torch.Tensor | None,
    *,
    up: int = 1,
    down: int = 1,
    padding: Sequence[int] = (0, 0, 0, 0),
    gain: float = 1.0,
) -> torch.Tensor:
    """Upsample (insert zeros), pad, convolve with ``f``, downsample (keep every ``down``-th).

    Input: (N, C, H, W); ``f``: None (identity), (K,) applied separably along
    both axes, or (K, K); ``padding``: (x0, x1, y0, y1), negative crops.
    Output: (N, C, (H * up + y0 + y1 - K + 1 + down - 1) // down, likewise W).
    The filter is scaled so that it sums to ``gain`` in 2-D (``gain ** 0.5``
    per axis for a separable one) and applied as a true convolution (flipped).
    """
    batch, channels, height, width = x.shape
    if f is None:
        f = x.new_ones(1)
    f = f.to(x.dtype)
    if up > 1:
        x = x.reshape(batch, channels, height, 1, width, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(batch, channels, height * up, width * up)
    x0, x1, y0, y1 = padding
    x = F.pad(x, [max(x0, 0), max(x1, 0), max(y0, 0), max(y1, 0)])
    x = x[:, :, max(-y0, 0) : x.shape[2] - max(-y1, 0), max(-x0, 0) : x.shape[3] - max(-x1, 0)]
    f = (f * gain ** (f.ndim / 2)).flip(list(range(f.ndim)))
    f = f[None, None].repeat(channels, 1, *([1] * f.ndim))
    # keeping every down-th output of a full convolution = a strided convolution
    if f.ndim == 4:
        return F.conv2d(x, f, stride=down, groups=channels)
    x = F.conv2d(x, f.unsqueeze(2), stride=(1, down), groups=channels)
    return F.conv2d(x, f.unsqueeze(3), stride=(down, 1), groups=channels)


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
    """Bias, upsample by ``up`` with ``fu``, leaky ReLU times ``gain``, clamp to
    ``[-clamp, clamp]``, downsample by ``down`` with ``fd``: NVIDIA's
    ``_filtered_lrelu_ref``. Input: (N, C, H, W), b: (C,). Output: (N, C, H', W')."""
    x = x + b[None, :, None, None]
    x = upfirdn2d(x, fu, up=up, padding=padding, gain=up**2)
    x = F.leaky_relu(x, slope) * gain if slope != 1 else x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return upfirdn2d(x, fd, down=down)


def make_transform(translate: Sequence[float] = (0.0, 0.0), rotate: float = 0.0) -> torch.Tensor:
    """The image transform of NVIDIA's ``gen_images.py`` (``make_transform``). Output: (3, 3).

    ``translate`` (x right, y down) is in units of the image's size (the
    output image spans [-0.5, 0.5] on both axes); ``rotate`` is in degrees,
    positive = counter-clockwise on screen.
    """
    angle = math.radians(rotate)
    s, c = math.sin(angle), math.cos(angle)
    tx, ty = (float(t) for t in translate)
    return torch.tensor([[c, s, tx], [-s, c, ty], [0.0, 0.0, 1.0]], dtype=torch.float64)


class _Reference:
    """This module's reference ops, under the names :mod:`.ops` gives its fast ones."""

    modulated_conv2d = staticmethod(modulated_conv2d)
    filtered_lrelu = staticmethod(filtered_lrelu)


# -- the layer geometry ------------------------------------------------------------------


@dataclass(frozen=True)
class LayerSpec:
    """One synthesis layer's place in the progression (NVIDIA's SynthesisNetwork.__init__)."""

    name: str
    is_torgb: bool
    is_critically_sampled: bool
    use_fp16: bool
    in_channels: int
    out_channels: int
    in_size: int
    out_size: int
    in_sampling_rate: int
    out_sampling_rate: int
    in_cutoff: float
    out_cutoff: float
    in_half_width: float
    out_half_width: float


def layer_specs(
    *,
    img_resolution: int,
    img_channels: int,
    channel_base: int = 32768,
    channel_max: int = 512,
    num_layers: int = 14,
    num_critical: int = 2,
    first_cutoff: float = 2,
    first_stopband: float = 2**2.1,
    last_stopband_rel: float = 2**0.3,
    margin_size: int = 10,
    num_fp16_res: int = 4,
) -> tuple[dict[str, Any], list[LayerSpec]]:
    """The Fourier input's arguments and the ``num_layers + 1`` layers' specs.

    Cutoffs and minimum stopbands grow geometrically from the first layer to
    the last non-critical one; sampling rates are the next power of two of
    twice the stopband (at most the image resolution); the last two layers
    have the image's size, the others ``margin_size`` pixels around.
    """
    last_cutoff = img_resolution / 2
    last_stopband = last_cutoff * last_stopband_rel
    exponents = np.minimum(np.arange(num_layers + 1) / (num_layers - num_critical), 1)
    cutoffs = first_cutoff * (last_cutoff / first_cutoff) ** exponents
    stopbands = first_stopband * (last_stopband / first_stopband) ** exponents
    sampling_rates = np.exp2(np.ceil(np.log2(np.minimum(stopbands * 2, img_resolution))))
    half_widths = np.maximum(stopbands, sampling_rates / 2) - cutoffs
    sizes = sampling_rates + margin_size * 2
    sizes[-2:] = img_resolution
    channels = np.rint(np.minimum((channel_base / 2) / cutoffs, channel_max))
    channels[-1] = img_channels

    input_args = dict(
        channels=int(channels[0]),
        size=int(sizes[0]),
        sampling_rate=float(sampling_rates[0]),
        bandwidth=float(cutoffs[0]),
    )
    specs = []
    for idx in range(num_layers + 1):
        prev = max(idx - 1, 0)
        specs.append(
            LayerSpec(
                name=f"L{idx}_{int(sizes[idx])}_{int(channels[idx])}",
                is_torgb=idx == num_layers,
                is_critically_sampled=idx >= num_layers - num_critical,
                use_fp16=bool(sampling_rates[idx] * 2**num_fp16_res > img_resolution),
                in_channels=int(channels[prev]),
                out_channels=int(channels[idx]),
                in_size=int(sizes[prev]),
                out_size=int(sizes[idx]),
                in_sampling_rate=int(sampling_rates[prev]),
                out_sampling_rate=int(sampling_rates[idx]),
                in_cutoff=float(cutoffs[prev]),
                out_cutoff=float(cutoffs[idx]),
                in_half_width=float(half_widths[prev]),
                out_half_width=float(half_widths[idx]),
            )
        )
    return input_args, specs


# -- the modules -------------------------------------------------------------------------


class FullyConnectedLayer(nn.Module):
    """Linear layer with run-time weight scaling. Input: (N, in_features). Output: (N, out_features).

    ``activation='lrelu'``: leaky ReLU (slope 0.2) of the biased output, times sqrt(2).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        activation: str = "linear",
        bias: bool = True,
        lr_multiplier: float = 1.0,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features, self.activation = in_features, out_features, activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x @ (self.weight * self.weight_gain).t()
        if self.bias is not None:
            x = x + self.bias * self.bias_gain
        if self.activation == "lrelu":
            x = F.leaky_relu(x, 0.2) * SQRT2
        return x


class MappingNetwork(nn.Module):
    """z (and label c) -> w, broadcast to ``num_ws`` and truncated towards ``w_avg``.

    Input: z (N, z_dim), c (N, c_dim) or None. Output: (N, num_ws, w_dim).
    """

    def __init__(
        self,
        z_dim: int,
        c_dim: int,
        w_dim: int,
        num_ws: int,
        *,
        num_layers: int = 2,
        lr_multiplier: float = 0.01,
        w_avg_beta: float = 0.998,  # training only
    ) -> None:
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.num_ws, self.num_layers = num_ws, num_layers
        self.embed = FullyConnectedLayer(c_dim, w_dim) if c_dim > 0 else None
        features = [z_dim + (w_dim if c_dim > 0 else 0)] + [w_dim] * num_layers
        for idx in range(num_layers):
            layer = FullyConnectedLayer(
                features[idx], features[idx + 1], activation="lrelu", lr_multiplier=lr_multiplier
            )
            setattr(self, f"fc{idx}", layer)
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(
        self,
        z: torch.Tensor,
        c: torch.Tensor | None = None,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
    ) -> torch.Tensor:
        """Truncation moves the first ``truncation_cutoff`` rows (all by default)
        towards ``w_avg``: ``w_avg + psi * (w - w_avg)``."""
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise LatentError(f"z has shape {tuple(z.shape)}; expected (N, {self.z_dim})")
        if self.c_dim > 0 and (c is None or tuple(c.shape) != (z.shape[0], self.c_dim)):
            got = None if c is None else tuple(c.shape)
            raise LatentError(f"c has shape {got}; expected ({z.shape[0]}, {self.c_dim})")
        x = _normalize(z.to(torch.float32))
        if self.c_dim > 0:
            x = torch.cat([x, _normalize(self.embed(c.to(torch.float32)))], dim=1)
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)
        ws = x.unsqueeze(1).repeat(1, self.num_ws, 1)
        if truncation_psi != 1:
            cutoff = self.num_ws if truncation_cutoff is None else truncation_cutoff
            head = self.w_avg.lerp(ws[:, :cutoff], truncation_psi)
            ws = torch.cat([head, ws[:, cutoff:]], dim=1)
        return ws


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return x * (x.square().mean(1, keepdim=True) + 1e-8).rsqrt()


class SynthesisInput(nn.Module):
    """Fourier features on a ``size`` x ``size`` grid, turned by ``affine(w)`` and ``transform``.

    Input: w (N, w_dim). Output: (N, channels, size, size).

    ``transform`` (3, 3) is the user's *inverse* transform of the resulting
    image: features are sampled at ``transform @ (x, y, 1)``, where the grid
    spans ``size / sampling_rate`` units and the final image [-0.5, 0.5].
    :meth:`set_transform` writes it as NVIDIA's ``gen_images.py`` and
    visualizer do.
    """

    def __init__(
        self, w_dim: int, channels: int, size: int, sampling_rate: float, bandwidth: float
    ) -> None:
        super().__init__()
        self.w_dim, self.channels = w_dim, channels
        self.size = (size, size)  # (width, height)
        self.sampling_rate, self.bandwidth = sampling_rate, bandwidth
        self.weight = nn.Parameter(torch.randn(channels, channels))
        self.affine = FullyConnectedLayer(w_dim, 4)
        self.register_buffer("transform", torch.eye(3))
        self.register_buffer("freqs", torch.zeros(channels, 2))
        self.register_buffer("phases", torch.zeros(channels))

    @torch.no_grad()
    def set_transform(self, translate: Sequence[float] = (0.0, 0.0), rotate: float = 0.0) -> None:
        """Move the image content by ``translate`` and turn it by ``rotate`` (see :func:`make_transform`)."""
        matrix = torch.linalg.inv(make_transform(translate, rotate))
        self.transform.copy_(matrix.to(self.transform.dtype))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        # learned rotation (r_c, r_s) and translation (t_x, t_y), as the inverse transform
        t = self.affine(w)
        t = t / t[:, :2].norm(dim=1, keepdim=True)
        cos, sin, tx, ty = t.unbind(1)
        zero, one = torch.zeros_like(cos), torch.ones_like(cos)
        m_r = torch.stack([cos, -sin, zero, sin, cos, zero, zero, zero, one], 1).view(-1, 3, 3)
        m_t = torch.stack([one, zero, -tx, zero, one, -ty, zero, zero, one], 1).view(-1, 3, 3)
        transforms = m_r @ m_t @ self.transform.to(w.dtype)  # (N, 3, 3)

        freqs = self.freqs @ transforms[:, :2, :2]  # (N, C, 2)
        phases = self.phases + (self.freqs @ transforms[:, :2, 2:]).squeeze(2)  # (N, C)
        # dampen frequencies the user's transform pushed out of band
        amplitudes = 1 - (freqs.norm(dim=2) - self.bandwidth) / (
            self.sampling_rate / 2 - self.bandwidth
        )
        amplitudes = amplitudes.clamp(0, 1)

        width, height = self.size
        xs = (
            torch.arange(width, device=w.device, dtype=w.dtype) + 0.5 - width / 2
        ) / self.sampling_rate
        ys = (
            torch.arange(height, device=w.device, dtype=w.dtype) + 0.5 - height / 2
        ) / self.sampling_rate
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # (H, W, 2)
        x = torch.einsum("hwk,nck->nhwc", grid, freqs) + phases[:, None, None, :]
        x = torch.sin(x * (2 * math.pi)) * amplitudes[:, None, None, :]
        x = x @ (self.weight / math.sqrt(self.channels)).t()
        return x.permute(0, 3, 1, 2)


class SynthesisLayer(nn.Module):
    """Modulated convolution, then the filtered leaky ReLU. Input: (N, in_channels,
    in_size, in_size), w (N, w_dim). Output: (N, out_channels, out_size, out_size).

    Upsampling to ``tmp_sampling_rate`` (``lrelu_upsampling`` times the higher
    of the two rates) keeps the leaky ReLU's harmonics below Nyquist; the
    ToRGB layer is a linear 1x1 convolution without demodulation.
    ``fast`` (an attribute, not a checkpoint option) picks :mod:`.ops` over
    the reference functions of this module.
    """

    fast: bool = True

    def __init__(
        self,
        w_dim: int,
        spec: LayerSpec,
        *,
        conv_kernel: int = 3,
        filter_size: int = 6,
        lrelu_upsampling: int = 2,
        use_radial_filters: bool = False,
        conv_clamp: float | None = 256,
        magnitude_ema_beta: float = 0.999,  # training only
    ) -> None:
        super().__init__()
        self.w_dim, self.is_torgb, self.use_fp16 = w_dim, spec.is_torgb, spec.use_fp16
        self.in_channels, self.out_channels = spec.in_channels, spec.out_channels
        self.in_size, self.out_size = (spec.in_size,) * 2, (spec.out_size,) * 2
        self.in_sampling_rate, self.out_sampling_rate = (
            spec.in_sampling_rate,
            spec.out_sampling_rate,
        )
        self.tmp_sampling_rate = max(spec.in_sampling_rate, spec.out_sampling_rate) * (
            1 if spec.is_torgb else lrelu_upsampling
        )
        self.conv_kernel = 1 if spec.is_torgb else conv_kernel
        self.conv_clamp = conv_clamp

        self.affine = FullyConnectedLayer(w_dim, self.in_channels)
        k = self.conv_kernel
        self.weight = nn.Parameter(torch.randn(self.out_channels, self.in_channels, k, k))
        self.bias = nn.Parameter(torch.zeros(self.out_channels))
        self.register_buffer("magnitude_ema", torch.ones([]))

        self.up_factor = round(self.tmp_sampling_rate / self.in_sampling_rate)
        self.down_factor = round(self.tmp_sampling_rate / self.out_sampling_rate)
        self.up_taps = (
            filter_size * self.up_factor if self.up_factor > 1 and not self.is_torgb else 1
        )
        self.down_taps = (
            filter_size * self.down_factor if self.down_factor > 1 and not self.is_torgb else 1
        )
        self.down_radial = use_radial_filters and not spec.is_critically_sampled
        # the filters come from the checkpoint (NVIDIA designs them with scipy at
        # construction); one tap means none: the buffer is None, as in the pickle
        self.register_buffer("up_filter", torch.zeros(self.up_taps) if self.up_taps > 1 else None)
        down_shape = (self.down_taps,) * (2 if self.down_radial else 1)
        self.register_buffer("down_filter", torch.zeros(down_shape) if self.down_taps > 1 else None)

        # padding that places the output samples symmetrically (the paper's Appendix C.3)
        pad_total = (spec.out_size - 1) * self.down_factor + 1
        pad_total -= (spec.in_size + self.conv_kernel - 1) * self.up_factor
        pad_total += self.up_taps + self.down_taps - 2
        pad_lo = (pad_total + self.up_factor) // 2
        pad_hi = pad_total - pad_lo
        self.padding = [pad_lo, pad_hi, pad_lo, pad_hi]  # x0, x1, y0, y1

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w)
        if self.is_torgb:
            styles = styles / math.sqrt(self.in_channels * self.conv_kernel**2)
        impl = ops if self.fast else _Reference
        x = impl.modulated_conv2d(
            x,
            self.weight,
            styles,
            demodulate=not self.is_torgb,
            padding=self.conv_kernel - 1,
            input_gain=self.magnitude_ema.rsqrt(),
        )
        return impl.filtered_lrelu(
            x,
            self.up_filter,
            self.down_filter,
            self.bias,
            up=self.up_factor,
            down=self.down_factor,
            padding=self.padding,
            gain=1.0 if self.is_torgb else SQRT2,
            slope=1.0 if self.is_torgb else 0.2,
            clamp=self.conv_clamp,
        )


class SynthesisNetwork(nn.Module):
    """ws -> image. Input: (N, num_layers + 2, w_dim). Output: (N, img_channels, R, R)."""

    def __init__(
        self,
        w_dim: int,
        img_resolution: int,
        img_channels: int,
        *,
        channel_base: int = 32768,
        channel_max: int = 512,
        num_layers: int = 14,
        num_critical: int = 2,
        first_cutoff: float = 2,
        first_stopband: float = 2**2.1,
        last_stopband_rel: float = 2**0.3,
        margin_size: int = 10,
        output_scale: float = 0.25,
        num_fp16_res: int = 4,
        **layer_kwargs: Any,
    ) -> None:
        super().__init__()
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        self.num_layers, self.num_ws = num_layers, num_layers + 2
        self.output_scale = output_scale
        input_args, specs = layer_specs(
            img_resolution=img_resolution,
            img_channels=img_channels,
            channel_base=channel_base,
            channel_max=channel_max,
            num_layers=num_layers,
            num_critical=num_critical,
            first_cutoff=first_cutoff,
            first_stopband=first_stopband,
            last_stopband_rel=last_stopband_rel,
            margin_size=margin_size,
            num_fp16_res=num_fp16_res,
        )
        self.input = SynthesisInput(w_dim=w_dim, **input_args)
        self.layer_names = [spec.name for spec in specs]
        for spec in specs:
            setattr(self, spec.name, SynthesisLayer(w_dim, spec, **layer_kwargs))

    def forward(self, ws: torch.Tensor) -> torch.Tensor:
        if ws.ndim != 3 or tuple(ws.shape[1:]) != (self.num_ws, self.w_dim):
            raise LatentError(
                f"ws has shape {tuple(ws.shape)}; expected (N, {self.num_ws}, {self.w_dim})"
            )
        ws = ws.to(torch.float32).unbind(dim=1)
        x = self.input(ws[0])
        for name, w in zip(self.layer_names, ws[1:], strict=True):
            x = getattr(self, name)(x, w)
        return x * self.output_scale if self.output_scale != 1 else x


class StyleGAN3Generator(nn.Module):
    """NVIDIA's StyleGAN3 ``Generator``: z (N, z_dim) [+ c (N, c_dim)] -> image (N, C, R, R).

    As NVIDIA's: ``mapping(z, c=None, truncation_psi=1, truncation_cutoff=None)``
    gives ws (N, num_ws, w_dim); ``synthesis(ws)`` makes images from them,
    differentiable in ws (W+ is ``num_ws`` independent rows); images are
    roughly in [-1, 1].
    """

    def __init__(
        self,
        z_dim: int,
        c_dim: int,
        w_dim: int,
        img_resolution: int,
        img_channels: int,
        mapping_kwargs: dict[str, Any] | None = None,
        **synthesis_kwargs: Any,
    ) -> None:
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.img_resolution, self.img_channels = img_resolution, img_channels
        # NVIDIA's order: synthesis first, since it decides num_ws
        self.synthesis = SynthesisNetwork(w_dim, img_resolution, img_channels, **synthesis_kwargs)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim, c_dim, w_dim, self.num_ws, **(mapping_kwargs or {}))

    # -- building from a pickle ------------------------------------------------------------

    @classmethod
    def from_persistent(cls, obj: PersistentObject) -> StyleGAN3Generator:
        """The generator of a pickle's ``G_ema`` (from :func:`~soundguide.core.nvidia_pickle.load_nvidia_network`).

        Built from its ``init_kwargs``; every layer's geometry (sizes,
        channels, sampling rates, up/down factors, filter taps, padding,
        kernel size, radial filters, clamp, gains) is checked against the
        attributes the pickle saved, then the state dict loads strictly.
        Options this module does not implement are refused by name.
        """
        if obj.class_name != "Generator" or "input" not in _child(obj, "synthesis").submodules():
            raise CheckpointError(f"{obj.source} is no StyleGAN3 generator")
        kwargs = dict(obj.init_kwargs)
        kwargs.update(
            zip(
                ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels"),
                obj.init_args,
                strict=False,
            )
        )
        mapping_kwargs = dict(kwargs.get("mapping_kwargs") or {})
        _refuse_unknown(mapping_kwargs, MAPPING_OPTIONS, "mapping_kwargs.")
        _refuse_unknown(kwargs, GENERATOR_OPTIONS | SYNTHESIS_OPTIONS, "")
        missing = sorted(
            {"z_dim", "c_dim", "w_dim", "img_resolution", "img_channels"} - set(kwargs)
        )
        if missing:
            raise CheckpointError(f"StyleGAN3 pickle lacks the option(s) {', '.join(missing)}")
        kwargs["mapping_kwargs"] = mapping_kwargs
        try:
            model = cls(**kwargs)
        except (ValueError, ZeroDivisionError) as exc:
            raise CheckpointError(
                f"StyleGAN3 pickle options {one_line(kwargs, 200)}: {exc}"
            ) from exc
        _check_attributes(model, obj, "")
        try:
            model.load_state_dict(obj.state_dict(), strict=True)
        except RuntimeError as exc:
            raise CheckpointError(
                f"StyleGAN3 state dict does not fit: {one_line(exc, 300)}"
            ) from exc
        return model.eval().requires_grad_(False)

    # -- running -------------------------------------------------------------------------

    def set_fast(self, enabled: bool = True) -> StyleGAN3Generator:
        """Run the synthesis layers with the fast ops of :mod:`.ops` (the default)
        or with this module's reference functions; the results agree to float32 rounding."""
        for module in self.modules():
            if isinstance(module, SynthesisLayer):
                module.fast = enabled
        return self

    def forward(
        self,
        z: torch.Tensor,
        c: torch.Tensor | None = None,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
    ) -> torch.Tensor:
        """z (N, z_dim) [+ c (N, c_dim)] -> images: ``synthesis(mapping(z, c, psi, cutoff))``."""
        return self.synthesis(self.mapping(z, c, truncation_psi, truncation_cutoff))

    def set_input_transform(
        self, translate: Sequence[float] = (0.0, 0.0), rotate: float = 0.0
    ) -> None:
        """Translate (in image sizes, x right, y down) and rotate (degrees,
        counter-clockwise) the generated image, as ``gen_images.py --translate
        --rotate`` and the visualizer do: ``input.transform`` becomes the
        inverse of :func:`make_transform`. ``(0, 0), 0`` restores the identity."""
        self.synthesis.input.set_transform(translate, rotate)


# -- checking a pickle against the model ------------------------------------------------------

_CHECKED = (
    "z_dim", "c_dim", "w_dim", "num_ws", "num_layers", "img_resolution", "img_channels",
    "output_scale", "layer_names", "in_features", "out_features", "activation",
    "weight_gain", "bias_gain", "channels", "size", "sampling_rate", "bandwidth",
    "is_torgb", "in_channels", "out_channels", "in_size", "out_size", "in_sampling_rate",
    "out_sampling_rate", "tmp_sampling_rate", "conv_kernel", "conv_clamp", "up_factor",
    "down_factor", "up_taps", "down_taps", "down_radial", "padding",
)  # fmt: skip


def _child(record: ModuleRecord, name: str) -> ModuleRecord:
    child = record.submodules().get(name)
    if child is None:
        raise CheckpointError(f"{record.class_name} has no submodule {name!r}")
    return child


def _refuse_unknown(options: dict[str, Any], known: frozenset[str], prefix: str) -> None:
    unknown = sorted(set(options) - known)
    if unknown:
        raise CheckpointError(
            f"StyleGAN3 option(s) not supported: {', '.join(prefix + k for k in unknown)} "
            f"(supported: {', '.join(sorted(known))})"
        )


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, np.bool_ | bool) or isinstance(b, np.bool_ | bool):
        return isinstance(a, np.bool_ | bool) and isinstance(b, np.bool_ | bool) and a == b
    if a is None or b is None or isinstance(a, str) or isinstance(b, str):
        return a == b
    if isinstance(a, list | tuple) and a and isinstance(a[0], str):
        return list(a) == list(b)
    try:
        return np.allclose(
            np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64), rtol=1e-6
        )
    except (TypeError, ValueError):
        return False


def _check_attributes(module: nn.Module, record: ModuleRecord, where: str) -> None:
    for name in _CHECKED:
        if name in record.state and hasattr(module, name):
            saved, ours = record.state[name], getattr(module, name)
            if not _same(saved, ours):
                raise CheckpointError(
                    f"StyleGAN3 {where or 'Generator'}.{name} is {one_line(repr(saved), 60)} "
                    f"in the pickle, {one_line(repr(ours), 60)} as built from its options"
                )
    children = record.submodules()
    for name, child in module.named_children():
        if name not in children:
            raise CheckpointError(f"StyleGAN3 pickle has no {where + '.' if where else ''}{name}")
        _check_attributes(child, children[name], f"{where}.{name}" if where else name)
