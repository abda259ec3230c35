"""NVIDIA's StyleGAN2-ADA generator (``training/networks.py``) in pure PyTorch: the specification.

``Generator`` = ``MappingNetwork`` (z, optional label c -> W, broadcast to
``num_ws`` latents, truncation towards ``w_avg``) + ``SynthesisNetwork`` (one
``SynthesisBlock`` per resolution 4, 8, ..., each with up-sampling and plain
``SynthesisLayer``s and a ``ToRGBLayer`` whose images are summed, the 'skip'
architecture). Built from an NVIDIA pickle's ``G_ema`` record
(:class:`~soundguide.core.nvidia_pickle.PersistentObject`) by
:meth:`StyleGAN2ADAGenerator.from_persistent`, which reads its constructor
arguments and loads its state dict with ``strict=True``.

Every op is written as NVIDIA's reference (``impl='ref'``) ops compute it:
FIR up-sampling by zero insertion and a convolution with the filter,
modulated convolutions as one grouped convolution, bias + activation + gain
+ clamp (``conv_clamp``). Blocks NVIDIA marks ``use_fp16`` (``num_fp16_res``)
run in float32 here, on any device: NVIDIA's ADA code casts them to float16
on every device unless ``force_fp32=True`` (StyleGAN3's checks for CUDA; this
one does not), so these images are those of ``force_fp32=True``, the float16
run's up to its rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

from soundguide.core.errors import CheckpointError, LatentError

__all__ = [
    "StyleGAN2ADAGenerator",
    "modulated_conv2d",
    "setup_filter",
    "upfirdn2d",
]

NoiseMode = Literal["const", "random", "none"]

# Attribute names below (mapping, synthesis, embed, fc{i}, w_avg, b{res}, const,
# conv0, conv1, torgb, affine, weight, bias, noise_const, noise_strength,
# resample_filter) are those of NVIDIA's modules: the pickle's state-dict keys.

_ACTIVATIONS: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], float]] = {
    "linear": (lambda x: x, 1.0),
    "relu": (F.relu, math.sqrt(2)),
    "lrelu": (lambda x: F.leaky_relu(x, 0.2), math.sqrt(2)),
}


# -- ops -------------------------------------------------------------------------------


def setup_filter(taps: Sequence[float]) -> torch.Tensor:
    """NVIDIA's ``upfirdn2d.setup_filter`` for fewer than 8 taps: the outer
    product, normalized to sum 1. Output: (K, K)."""
    f = torch.as_tensor(taps, dtype=torch.float32)
    if f.ndim == 1:
        f = torch.outer(f, f)
    return f / f.sum()


def upfirdn2d(
    x: torch.Tensor,
    f: torch.Tensor,
    *,
    up: int = 1,
    pad: Sequence[int] = (0, 0, 0, 0),
    gain: float = 1,
) -> torch.Tensor:
    """Zero-insertion up-sampling by ``up``, padding (x0, x1, y0, y1; negative crops),
    then convolution with the 2-D filter ``f`` times ``gain``, channel by channel.

    Input: (N, C, H, W). Output: (N, C, H*up + y0 + y1 - K + 1, W*up + x0 + x1 - K + 1).
    """
    n, c, h, w = x.shape
    if up > 1:
        x = F.pad(x.reshape(n, c, h, 1, w, 1), [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(n, c, h * up, w * up)
    x0, x1, y0, y1 = pad
    x = F.pad(x, [max(x0, 0), max(x1, 0), max(y0, 0), max(y1, 0)])
    x = x[:, :, max(-y0, 0) : x.shape[2] - max(-y1, 0), max(-x0, 0) : x.shape[3] - max(-x1, 0)]
    kernel = (f * gain).to(x.dtype).flip([0, 1])  # convolution, not correlation
    return F.conv2d(x, kernel[None, None].expand(c, 1, *f.shape), groups=c)


def upsample2d(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """2x FIR up-sampling (``upfirdn2d.upsample2d``). Input: (N, C, H, W). Output: (N, C, 2H, 2W)."""
    k = f.shape[-1]
    p0, p1 = (k + 1) // 2, (k - 2) // 2
    return upfirdn2d(x, f, up=2, pad=(p0, p1, p0, p1), gain=4)


def bias_act(
    x: torch.Tensor,
    b: torch.Tensor | None,
    act: str = "linear",
    gain: float | None = None,
    clamp: float | None = None,
) -> torch.Tensor:
    """Add the bias along dim 1, activate, scale by ``gain`` (the activation's
    default when None), clamp to +-``clamp``."""
    func, default_gain = _ACTIVATIONS[act]
    if b is not None:
        x = x + b.to(x.dtype).reshape([-1 if i == 1 else 1 for i in range(x.ndim)])
    x = func(x)
    gain = default_gain if gain is None else gain
    if gain != 1:
        x = x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


def modulated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    *,
    noise: torch.Tensor | None = None,
    up: int = 1,
    padding: int = 0,
    resample_filter: torch.Tensor | None = None,
    demodulate: bool = True,
) -> torch.Tensor:
    """Per-sample weights ``weight * styles`` (demodulated), as one grouped convolution.

    Input: x (N, C_in, H, W), weight (C_out, C_in, k, k), styles (N, C_in),
    noise broadcastable to the output. Output: (N, C_out, H*up, W*up); with
    ``up`` = 2 a transposed convolution (stride 2) then the FIR ``resample_filter``.
    """
    n, c_in, h, w_ = x.shape
    c_out, _, kh, kw = weight.shape
    w = weight[None] * styles.reshape(n, 1, c_in, 1, 1)  # (N, C_out, C_in, k, k)
    if demodulate:
        w = w * torch.rsqrt(w.square().sum(dim=[2, 3, 4]) + 1e-8).reshape(n, c_out, 1, 1, 1)
    x = x.reshape(1, n * c_in, h, w_)
    w = w.to(x.dtype)
    if up == 1:
        x = F.conv2d(x, w.reshape(n * c_out, c_in, kh, kw), padding=padding, groups=n)
    else:
        # conv2d_resample's route for up-sampling: padding is counted on the
        # up-sampled image; NVIDIA convolves (flip_weight=False) when up > 1,
        # which a transposed convolution of the unflipped weight is
        assert resample_filter is not None
        fw = resample_filter.shape[-1]
        p0 = padding + (fw + up - 1) // 2 - (kw - 1)
        p1 = padding + (fw - up) // 2 - (kw - up)
        t = max(min(-p0, -p1), 0)
        w = w.transpose(1, 2).reshape(n * c_in, c_out, kh, kw)
        x = F.conv_transpose2d(x, w, stride=up, padding=t, groups=n)
        x = upfirdn2d(x, resample_filter, pad=(p0 + t, p1 + t) * 2, gain=up**2)
    x = x.reshape(n, c_out, *x.shape[2:])
    return x if noise is None else x + noise.to(x.dtype)


# -- modules ---------------------------------------------------------------------------


class FullyConnectedLayer(nn.Module):
    """Linear layer with run-time weight scaling and an activation. Input: (N, in). Output: (N, out)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias: bool = True,
        activation: str = "linear",
        lr_multiplier: float = 1.0,
        bias_init: float = 0.0,
    ) -> None:
        super().__init__()
        self.activation = activation
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        b = None if self.bias is None else self.bias.to(x.dtype) * self.bias_gain
        return bias_act(x.matmul(w.t()), b, act=self.activation)


def normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + eps)


class MappingNetwork(nn.Module):
    """z (N, z_dim) and label c (N, c_dim) -> W+ (N, num_ws, w_dim), optionally truncated."""

    def __init__(
        self,
        z_dim: int,
        c_dim: int,
        w_dim: int,
        num_ws: int,
        *,
        num_layers: int = 8,
        embed_features: int | None = None,
        layer_features: int | None = None,
        activation: str = "lrelu",
        lr_multiplier: float = 0.01,
        w_avg_beta: float | None = 0.995,
    ) -> None:
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws = z_dim, c_dim, w_dim, num_ws
        self.num_layers = num_layers
        embed_features = 0 if c_dim == 0 else (w_dim if embed_features is None else embed_features)
        layer_features = w_dim if layer_features is None else layer_features
        features = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]
        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for i in range(num_layers):
            layer = FullyConnectedLayer(
                features[i], features[i + 1], activation=activation, lr_multiplier=lr_multiplier
            )
            setattr(self, f"fc{i}", layer)
        if w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros([w_dim]))
        else:
            self.w_avg = None

    def forward(
        self,
        z: torch.Tensor | None,
        c: torch.Tensor | None,
        truncation_psi: float = 1,
        truncation_cutoff: int | None = None,
    ) -> torch.Tensor:
        """z (N, z_dim), c (N, c_dim) or None -> W+ (N, num_ws, w_dim).

        ``truncation_psi`` pulls the first ``truncation_cutoff`` latents (all when
        None) towards ``w_avg``: ``w_avg + psi * (w - w_avg)``.
        """
        if not isinstance(z, torch.Tensor) or z.ndim != 2 or z.shape[1] != self.z_dim:
            raise LatentError(f"mapping expects z of shape (n, {self.z_dim}), got {_shape_of(z)}")
        if self.c_dim > 0 and (
            not isinstance(c, torch.Tensor) or tuple(c.shape) != (z.shape[0], self.c_dim)
        ):
            raise LatentError(
                f"this conditional generator needs labels c of shape ({z.shape[0]}, "
                f"{self.c_dim}), got {_shape_of(c)}"
            )
        if truncation_cutoff is not None and not _int_at_least(0)(truncation_cutoff):
            raise LatentError(
                f"truncation_cutoff must be None or an integer >= 0, got {truncation_cutoff!r}"
            )
        parts = []
        if self.z_dim > 0:
            parts.append(normalize_2nd_moment(z.to(torch.float32)))
        if self.c_dim > 0:
            parts.append(normalize_2nd_moment(self.embed(c.to(torch.float32))))
        x = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)
        x = x.unsqueeze(1).repeat([1, self.num_ws, 1])
        if truncation_psi != 1:
            if self.w_avg is None:
                raise LatentError("this generator keeps no w_avg (w_avg_beta=None): no truncation")
            cut = self.num_ws if truncation_cutoff is None else truncation_cutoff
            head = self.w_avg.lerp(x[:, :cut], truncation_psi)
            x = torch.cat([head, x[:, cut:]], dim=1)
        return x


class SynthesisLayer(nn.Module):
    """Modulated 3x3 convolution (2x up-sampling in a block's conv0), const noise, bias, activation.

    Input: (N, C_in, R/up, R/up) and w (N, w_dim). Output: (N, C_out, R, R).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        *,
        kernel_size: int = 3,
        up: int = 1,
        use_noise: bool = True,
        activation: str = "lrelu",
        resample_filter: Sequence[float] = (1, 3, 3, 1),
        conv_clamp: float | None = None,
    ) -> None:
        super().__init__()
        self.resolution, self.up, self.use_noise = resolution, up, use_noise
        self.activation, self.conv_clamp = activation, conv_clamp
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.padding = kernel_size // 2
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        if use_noise:
            self.register_buffer("noise_const", torch.empty(resolution, resolution))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))

    def forward(
        self,
        x: torch.Tensor,
        w: torch.Tensor,
        noise_mode: NoiseMode = "const",
        noise_map: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``noise_map`` (1 or N, 1, R, R), when given, takes the place of ``noise_const``
        (whatever ``noise_mode`` says); it is scaled by ``noise_strength`` as that is."""
        styles = self.affine(w)
        noise = None
        if self.use_noise and noise_map is not None:
            noise = noise_map.to(x.dtype) * self.noise_strength
        elif self.use_noise and noise_mode == "const":
            noise = self.noise_const * self.noise_strength
        elif self.use_noise and noise_mode == "random":
            r = self.resolution
            noise = torch.randn([x.shape[0], 1, r, r], device=x.device) * self.noise_strength
        x = modulated_conv2d(
            x,
            self.weight,
            styles,
            noise=noise,
            up=self.up,
            padding=self.padding,
            resample_filter=self.resample_filter,
        )
        return bias_act(x, self.bias, act=self.activation, clamp=self.conv_clamp)


class ToRGBLayer(nn.Module):
    """Modulated 1x1 convolution without demodulation. Input: (N, C, R, R). Output: (N, img_channels, R, R)."""

    def __init__(
        self, in_channels: int, out_channels: int, w_dim: int, *, conv_clamp: float | None = None
    ) -> None:
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / math.sqrt(in_channels)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False)
        return bias_act(x, self.bias, clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
    """One resolution of the 'skip' architecture: (conv0 up), conv1, torgb; the image
    so far is up-sampled and the block's RGB added.

    Input: x (N, C_in, R/2, R/2) or None (the 4x4 block's learned const), img
    (N, img_channels, R/2, R/2) or None, ws (N, num_conv + 1, w_dim).
    Output: x (N, C_out, R, R), img (N, img_channels, R, R).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        img_channels: int,
        *,
        resample_filter: Sequence[float] = (1, 3, 3, 1),
        conv_clamp: float | None = None,
        **layer_kwargs: Any,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.num_conv = 1 if in_channels == 0 else 2
        self.num_torgb = 1
        if in_channels == 0:
            self.const = nn.Parameter(torch.empty(out_channels, resolution, resolution))
        else:
            self.conv0 = SynthesisLayer(
                in_channels,
                out_channels,
                w_dim,
                resolution,
                up=2,
                resample_filter=resample_filter,
                conv_clamp=conv_clamp,
                **layer_kwargs,
            )
        self.conv1 = SynthesisLayer(
            out_channels, out_channels, w_dim, resolution, conv_clamp=conv_clamp, **layer_kwargs
        )
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)

    def forward(
        self,
        x: torch.Tensor | None,
        img: torch.Tensor | None,
        ws: torch.Tensor,
        noise_mode: NoiseMode = "const",
        noise: Sequence[torch.Tensor | None] = (None, None),
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``noise``: a map or None per convolution (conv0, conv1; conv1 alone at 4x4)."""
        w = ws.unbind(dim=1)
        if self.in_channels == 0:
            x = self.const.to(ws.dtype)[None].repeat([ws.shape[0], 1, 1, 1])
            x = self.conv1(x, w[0], noise_mode, noise[0])
        else:
            x = self.conv0(x, w[0], noise_mode, noise[0])
            x = self.conv1(x, w[1], noise_mode, noise[1])
        y = self.torgb(x, w[-1])
        img = y if img is None else upsample2d(img, self.resample_filter) + y
        return x, img


class SynthesisNetwork(nn.Module):
    """W+ (N, num_ws, w_dim) -> images (N, img_channels, R, R); channels at resolution
    r are ``min(channel_base // r, channel_max)``."""

    def __init__(
        self,
        w_dim: int,
        img_resolution: int,
        img_channels: int,
        *,
        channel_base: int = 32768,
        channel_max: int = 512,
        **block_kwargs: Any,
    ) -> None:
        super().__init__()
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        log2 = int(math.log2(img_resolution))
        self.block_resolutions = [2**i for i in range(2, log2 + 1)]
        channels = {r: min(channel_base // r, channel_max) for r in self.block_resolutions}
        self.num_ws = 0
        for r in self.block_resolutions:
            in_channels = channels[r // 2] if r > 4 else 0
            block = SynthesisBlock(in_channels, channels[r], w_dim, r, img_channels, **block_kwargs)
            self.num_ws += block.num_conv
            setattr(self, f"b{r}", block)
        self.num_ws += 1  # the last block's torgb

    def noise_layers(self) -> list[SynthesisLayer]:
        """The layers with a noise input, in the order of :meth:`noise_maps`."""
        layers = []
        for r in self.block_resolutions:
            block = getattr(self, f"b{r}")
            convs = [block.conv1] if block.in_channels == 0 else [block.conv0, block.conv1]
            layers += [conv for conv in convs if conv.use_noise]
        return layers

    def noise_maps(self) -> list[torch.Tensor]:
        """The stored maps as (1, 1, r, r) views of each layer's ``noise_const``
        (4, 8, 8, 16, 16, ...); [] when the network has no noise inputs."""
        return [layer.noise_const[None, None] for layer in self.noise_layers()]

    def check_noise(self, noise: Any, batch: int | None = None) -> None:
        """Raise :class:`LatentError` unless ``noise`` can replace :meth:`noise_maps`:
        one float map per noise layer, each (1, 1, r, r) or (``batch``, 1, r, r)."""
        fixed = self.noise_maps()
        if isinstance(noise, torch.Tensor) or not isinstance(noise, Sequence):
            raise LatentError(
                f"noise must be a list of {len(fixed)} maps, got {type(noise).__name__}"
            )
        if len(noise) != len(fixed):
            raise LatentError(
                f"this {self.img_resolution} px generator takes {len(fixed)} noise maps, "
                f"got {len(noise)}"
            )
        for i, (m, ref) in enumerate(zip(noise, fixed, strict=True)):
            r = ref.shape[-1]
            if (
                not isinstance(m, torch.Tensor)
                or m.ndim != 4
                or tuple(m.shape[1:]) != (1, r, r)
                or m.shape[0] == 0
                or (batch is not None and m.shape[0] not in (1, batch))
                or not m.is_floating_point()
            ):
                n = "n" if batch is None else f"1 or {batch}"
                raise LatentError(
                    f"noise map {i} must be a float tensor of shape ({n}, 1, {r}, {r}), "
                    f"got {_shape_of(m)}"
                )

    def forward(
        self,
        ws: torch.Tensor,
        noise_mode: NoiseMode = "const",
        noise: Sequence[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """W+ (N, num_ws, w_dim) -> images (N, img_channels, R, R), float32.

        ``noise_mode``: 'const' (the stored noise maps: deterministic), 'none',
        or 'random' (fresh ``torch.randn`` per call). ``noise``: maps in place of
        the stored ones (see :meth:`check_noise`; one per image or one for the
        batch), used whatever ``noise_mode`` says; maps that require grad get
        gradients.
        """
        expected = (self.num_ws, self.w_dim)
        if not isinstance(ws, torch.Tensor) or ws.ndim != 3 or tuple(ws.shape[1:]) != expected:
            raise LatentError(
                f"expected ws of shape (n, {expected[0]}, {expected[1]}) for this "
                f"{self.img_resolution} px generator, got {_shape_of(ws)}"
            )
        if not ws.is_floating_point():
            raise LatentError(f"ws must be a float tensor, got {ws.dtype}")
        if noise_mode not in ("const", "random", "none"):
            raise LatentError(f"noise_mode must be 'const', 'random' or 'none', got {noise_mode!r}")
        by_layer: dict[int, torch.Tensor] = {}
        if noise is not None:
            self.check_noise(noise, ws.shape[0])
            by_layer = {id(layer): m for layer, m in zip(self.noise_layers(), noise, strict=True)}
        ws = ws.to(torch.float32)
        x = img = None
        i = 0
        for r in self.block_resolutions:
            block = getattr(self, f"b{r}")
            convs = [block.conv1] if block.in_channels == 0 else [block.conv0, block.conv1]
            maps = [by_layer.get(id(conv)) for conv in convs]
            x, img = block(
                x, img, ws.narrow(1, i, block.num_conv + block.num_torgb), noise_mode, maps
            )
            i += block.num_conv
        return img


# -- the generator and its options -----------------------------------------------------


def _choice(*allowed: Any) -> Callable[[Any], bool]:
    return lambda v: v in allowed


def _int_at_least(low: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low


def _positive_or_none(v: Any) -> bool:
    return v is None or (isinstance(v, int | float) and not isinstance(v, bool) and v > 0)


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _taps(v: Any) -> bool:
    return isinstance(v, list | tuple) and 0 < len(v) < 8 and all(map(_number, v))


# option -> (what it must be, a check); options missing from a table are refused by name
_MAPPING_OPTIONS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "num_layers": ("an integer >= 1", _int_at_least(1)),
    "embed_features": ("None or an integer >= 1", lambda v: v is None or _int_at_least(1)(v)),
    "layer_features": ("None or an integer >= 1", lambda v: v is None or _int_at_least(1)(v)),
    "activation": ("one of 'linear', 'relu', 'lrelu'", _choice(*_ACTIVATIONS)),
    "lr_multiplier": ("a number", _number),
    "w_avg_beta": ("None or a number", lambda v: v is None or _number(v)),
}
_SYNTHESIS_OPTIONS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "channel_base": ("an integer >= 1", _int_at_least(1)),
    "channel_max": ("an integer >= 1", _int_at_least(1)),
    "num_fp16_res": ("an integer >= 0", _int_at_least(0)),  # run in float32 (module docstring)
    "architecture": ("'skip' ('orig' and 'resnet' are not supported)", _choice("skip")),
    "resample_filter": ("a list of 1 to 7 taps", _taps),
    "conv_clamp": ("None or a positive number", _positive_or_none),
    "fp16_channels_last": ("True or False", _choice(True, False)),  # memory layout only
    "kernel_size": ("an odd integer >= 1", lambda v: _int_at_least(1)(v) and v % 2 == 1),
    "use_noise": ("True or False", _choice(True, False)),
    "activation": ("one of 'linear', 'relu', 'lrelu'", _choice(*_ACTIVATIONS)),
}
_IGNORED_SYNTHESIS = ("num_fp16_res", "fp16_channels_last")


def _check_options(
    section: str, options: Mapping[str, Any], table: Mapping[str, tuple[str, Callable]]
) -> dict[str, Any]:
    if not isinstance(options, Mapping):
        raise CheckpointError(f"StyleGAN2-ADA {section} is a {type(options).__name__}, not a dict")
    for name, value in options.items():
        if name not in table:
            raise CheckpointError(
                f"unsupported StyleGAN2-ADA option {section}.{name}={value!r}; "
                f"supported: {', '.join(table)}"
            )
        what, check = table[name]
        if not check(value):
            raise CheckpointError(
                f"unsupported StyleGAN2-ADA option {section}.{name}={value!r}: must be {what}"
            )
    return dict(options)


class StyleGAN2ADAGenerator(nn.Module):
    """NVIDIA's StyleGAN2-ADA ``Generator`` ('skip' architecture), loadable from its pickle.

    As in NVIDIA's code, the two halves are submodules called directly:
    ``G.mapping(z, c, truncation_psi=1, truncation_cutoff=None)`` gives W+
    (N, :attr:`num_ws`, w_dim) with num_ws = 2 * log2(img_resolution) - 2;
    ``G.synthesis(ws, noise_mode='const')`` renders it to images
    (N, img_channels, R, R), roughly in [-1, 1]; ``G(z, c)`` does both.
    Parameters and buffers carry the names of the pickle's state dict.
    """

    def __init__(
        self,
        z_dim: int,
        c_dim: int,
        w_dim: int,
        img_resolution: int,
        img_channels: int,
        mapping_kwargs: Mapping[str, Any] | None = None,
        synthesis_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        for name, value, low in (
            ("z_dim", z_dim, 1),
            ("c_dim", c_dim, 0),
            ("w_dim", w_dim, 1),
            ("img_channels", img_channels, 1),
        ):
            if not _int_at_least(low)(value):
                raise CheckpointError(
                    f"StyleGAN2-ADA {name} must be an integer >= {low}, got {value!r}"
                )
        if not _int_at_least(4)(img_resolution) or img_resolution & (img_resolution - 1):
            raise CheckpointError(
                f"StyleGAN2-ADA img_resolution must be a power of two >= 4, got {img_resolution!r}"
            )
        mapping_kwargs = _check_options("mapping_kwargs", mapping_kwargs or {}, _MAPPING_OPTIONS)
        synthesis_kwargs = _check_options(
            "synthesis_kwargs", synthesis_kwargs or {}, _SYNTHESIS_OPTIONS
        )
        for name in (*_IGNORED_SYNTHESIS, "architecture"):
            synthesis_kwargs.pop(name, None)
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.synthesis = SynthesisNetwork(w_dim, img_resolution, img_channels, **synthesis_kwargs)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim, c_dim, w_dim, self.num_ws, **mapping_kwargs)

    @classmethod
    def from_persistent(cls, obj: Any) -> StyleGAN2ADAGenerator:
        """Build from a pickle's ``G_ema`` (a ``PersistentObject``) and load its weights (strict)."""
        class_name = getattr(obj, "class_name", type(obj).__name__)
        if class_name != "Generator" or not hasattr(obj, "init_kwargs"):
            raise CheckpointError(
                f"expected NVIDIA's Generator record (a pickle's G_ema), got {class_name}"
            )
        kwargs = dict(obj.init_kwargs)
        if obj.init_args:
            raise CheckpointError(
                f"StyleGAN2-ADA Generator was built with {len(obj.init_args)} positional "
                "arguments; NVIDIA's training passes keyword arguments only"
            )
        known = ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels")
        missing = [k for k in known if k not in kwargs]
        if missing:
            raise CheckpointError(f"StyleGAN2-ADA Generator record lacks {', '.join(missing)}")
        extra = [k for k in kwargs if k not in (*known, "mapping_kwargs", "synthesis_kwargs")]
        if extra:
            raise CheckpointError(
                f"unsupported StyleGAN2-ADA Generator option {extra[0]}={kwargs[extra[0]]!r}"
            )
        model = cls(**kwargs)
        state = obj.state_dict()
        missing_keys, unexpected = _key_diff(model, state)
        if missing_keys or unexpected:
            raise CheckpointError(
                "StyleGAN2-ADA weights do not match the Generator's options: "
                f"missing {_preview(missing_keys)}; unexpected {_preview(unexpected)}"
            )
        own = model.state_dict()
        for name, tensor in state.items():
            expected = own[name].shape
            if tensor.shape != expected:
                raise CheckpointError(
                    f"StyleGAN2-ADA weight {name} has shape {tuple(tensor.shape)}, "
                    f"expected {tuple(expected)}"
                )
        model.load_state_dict(state, strict=True)
        return model.eval().requires_grad_(False)

    def forward(
        self,
        z: torch.Tensor,
        c: torch.Tensor | None = None,
        truncation_psi: float = 1,
        truncation_cutoff: int | None = None,
        noise_mode: NoiseMode = "const",
    ) -> torch.Tensor:
        """z (N, z_dim), c -> images (N, img_channels, R, R): :attr:`mapping`, then :attr:`synthesis`."""
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        return self.synthesis(ws, noise_mode=noise_mode)

    def extra_repr(self) -> str:
        return (
            f"z_dim={self.z_dim}, c_dim={self.c_dim}, w_dim={self.w_dim}, "
            f"img_resolution={self.img_resolution}, img_channels={self.img_channels}, "
            f"num_ws={self.num_ws}"
        )


def _key_diff(model: nn.Module, state: Mapping[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    own = model.state_dict()
    return [k for k in own if k not in state], [k for k in state if k not in own]


def _preview(names: list[str], limit: int = 4) -> str:
    if not names:
        return "none"
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _shape_of(x: Any) -> str:
    return str(tuple(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__
