"""The fast routes of ``ModulatedConv2d``, ``StyledConv`` and ``ToRGB`` (model.py).

Each function here computes what the textbook forward of its layer in
model.py computes (per-sample modulated, demodulated weights in a grouped
convolution), in fewer passes over memory; the layers call them while their
``fast`` flag is set (the default), and the tests hold the two against each
other. They read the layers' parameters and keep what they derive from them
in :mod:`.cache`.

* The style scales the *activations*: ``conv(x * s) * d``, with the
  demodulation ``d = rsqrt(s ** 2 @ wsq + 1e-8)`` from a cached
  ``wsq = sum((w * scale) ** 2, (kh, kw))``; no per-sample weights are built.
  Where the weight is smaller than one sample's activations (high-resolution
  layers) the weights are modulated per sample after all
  (:func:`modulate_weights`).
* With frozen weights (latent optimization: every parameter has
  ``requires_grad=False``) a ``StyledConv`` runs as one autograd Function,
  :class:`FrozenStyledConv`, which keeps only its input, style,
  demodulation and output for the backward pass and computes no weight
  gradients: the backward pass needs only the input gradient of an
  unmodulated convolution.
* Wide 3x3 layers on CPU run as Winograd F(4x4, 3x3) convolutions
  (:mod:`.winograd`), forward and backward (:func:`use_winograd`).
* The sqrt(2) gain of the activation rides on the demodulation and on the
  noise and bias terms, saving a pass over the output.
* Noise maps are (1, 1, H, W), shared by the batch, or (N, 1, H, W), one per
  sample; projection tunes them, so gradients reach maps that require them,
  on every route (:class:`FrozenStyledConv` returns the noise term's).

When weights require gradients (training), or under autocast, the same
formulas run through plain autograd (:func:`modulated_conv2d_parts`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch.nn import functional as F

from .cache import derived
from .layout import as_batch, as_one_sample, is_channels_last
from .upfirdn2d import blur, blur_backward, upsample
from .winograd import winograd_conv3x3, winograd_conv3x3_backward, winograd_weight

if TYPE_CHECKING:
    from ..model import ModulatedConv2d, StyledConv, ToRGB

__all__ = [
    "FrozenStyledConv",
    "conv_weight",
    "demodulation",
    "folds_grad_scale",
    "frozen_backward",
    "frozen_forward",
    "modulate_weights",
    "modulated_conv2d",
    "modulated_conv2d_parts",
    "styled_conv",
    "to_rgb",
    "use_winograd",
    "weight_sq",
]

SQRT2 = math.sqrt(2.0)


# -- ModulatedConv2d -----------------------------------------------------------------


def conv_weight(conv: ModulatedConv2d, x: torch.Tensor) -> torch.Tensor:
    """The weight, without the equalized-lr ``scale``, in the layout the convolution wants.

    A view of the parameter (the scale rides on the style), except for a
    channels-last x or another dtype, where a converted copy is cached.
    Output: (C_out, C_in, k, k), or (C_in, C_out, k, k) for the transposed
    convolution of an up-sampling layer.
    """
    w = conv.weight[0]
    if conv.upsample:
        w = w.transpose(0, 1)
    if x.dtype == w.dtype and not is_channels_last(x):
        return w

    def build() -> torch.Tensor:
        return w.to(x.dtype).contiguous(memory_format=torch.channels_last)

    return derived(conv, "conv_weight", (conv.weight,), build, (x.dtype,))


def weight_sq(conv: ModulatedConv2d) -> torch.Tensor:
    """Sum of squared scaled weights over the kernel window. Output: (C_in, C_out)."""
    return derived(
        conv,
        "weight_sq",
        (conv.weight,),
        lambda: (conv.weight[0] * conv.scale).square().sum((2, 3)).t().contiguous(),
    )


def demodulation(conv: ModulatedConv2d, s: torch.Tensor) -> torch.Tensor:
    """d = 1 / sqrt(sum((w * s) ** 2) + 1e-8) per output channel.

    Input: s (N, C_in). Output: (N, C_out).
    """
    return torch.rsqrt(s.square() @ weight_sq(conv) + 1e-8)


def modulated_conv2d_parts(
    conv: ModulatedConv2d, x: torch.Tensor, latent: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The convolution of the modulated input and, apart, its demodulation.

    Input: x (N, C_in, H, W), latent (N, style_dim).
    Output: (N, C_out, H', W') and d (N, C_out), or None without demodulation.
    """
    s = conv.modulation(latent)
    weight = conv_weight(conv, x)
    xs = x * (s * conv.scale)[:, :, None, None].to(x.dtype)
    if conv.upsample:
        out = blur(conv.blur, F.conv_transpose2d(xs, weight, stride=2))
    else:
        out = F.conv2d(xs, weight, padding=conv.padding)
    return out, (demodulation(conv, s) if conv.demodulate else None)


def modulated_conv2d(conv: ModulatedConv2d, x: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
    """``ModulatedConv2d.forward``. Input: x (N, C_in, H, W), latent (N, style_dim).

    Output: (N, C_out, H', W').
    """
    out, d = modulated_conv2d_parts(conv, x, latent)
    return out if d is None else out * d[:, :, None, None].to(out.dtype)


def modulate_weights(conv: ModulatedConv2d, x: torch.Tensor) -> bool:
    """Whether scaling the weights (per sample) is cheaper than scaling ``x``.

    True when the weight is smaller than one sample's activations (the
    high-resolution layers), and the batch can be one grouped convolution.
    """
    n, _, h, w = x.shape
    if n > 1 and not x.is_contiguous():
        return False
    return conv.out_channel * conv.kernel_size**2 < h * w


def use_winograd(conv: ModulatedConv2d, x: torch.Tensor) -> bool:
    """Whether the frozen route runs this layer as a Winograd convolution.

    On CPUs, for 3x3 layers of 256+ channels of at least 64x64 pixels whose
    batch has at most 16384 pixels per channel: there the 4x fewer
    multiplications outweigh the memory-bound transforms (at 256 px, 128
    channels, they do not). Below 64x64 the gain does not pay for the cached
    weights (4x the layer's weights). GPUs have their own (cuDNN).
    ``benchmarks/stylegan2_speed.py`` measures the choice.
    """
    n, _, h, w = x.shape
    if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
        return False
    return (
        conv.winograd
        and not conv.upsample
        and conv.kernel_size == 3
        and x.device.type == "cpu"
        and min(conv.in_channel, conv.out_channel) >= 256
        and h % 4 == 0
        and w % 4 == 0
        and h * w >= 4096
        and n * h * w <= 16384
    )


def _winograd_weight(conv: ModulatedConv2d, x: torch.Tensor) -> torch.Tensor:
    """The cached (unscaled) weight in the Winograd domain: (36, C_out, C_in)."""
    return derived(
        conv,
        "winograd",
        (conv.weight,),
        lambda: winograd_weight(conv.weight[0].to(x.dtype)),
        (x.dtype,),
    )


def frozen_forward(
    conv: ModulatedConv2d, x: torch.Tensor, s: torch.Tensor, d: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """``blur?(conv(x * s)) * d + bias`` without autograd, for frozen weights.

    The convolution uses the unscaled weight: ``s`` carries the
    equalized-lr scale.

    Input: x (N, C_in, H, W), s (N, C_in), d (N, C_out), bias (C_out,).
    Output: (N, C_out, H', W').
    """
    n, c_in, h, w = x.shape
    k = conv.kernel_size
    if use_winograd(conv, x):
        out = winograd_conv3x3(x * s[:, :, None, None], _winograd_weight(conv, x))
        return out.mul_(d[:, :, None, None]).add_(bias[:, None, None])
    weight = conv_weight(conv, x)
    if modulate_weights(conv, x):
        # per-sample weights, in x's memory format (channels-last stays channels-last)
        layout = torch.channels_last if is_channels_last(x) else torch.contiguous_format
        if conv.upsample:  # weight: (C_in, C_out, k, k)
            wm = weight[None] * (s[:, :, None, None, None] * d[:, None, :, None, None])
            out = F.conv_transpose2d(
                as_one_sample(x),
                wm.reshape(n * c_in, conv.out_channel, k, k).contiguous(memory_format=layout),
                stride=2,
                groups=n,
            )
            return blur(conv.blur, as_batch(out, n), bias)
        wm = weight[None] * (d[:, :, None, None, None] * s[:, None, :, None, None])
        out = F.conv2d(
            as_one_sample(x),
            wm.reshape(n * conv.out_channel, c_in, k, k).contiguous(memory_format=layout),
            bias.repeat(n),
            padding=conv.padding,
            groups=n,
        )
        return as_batch(out, n)
    xs = x * s[:, :, None, None]
    # with one sample the bias can ride on the convolution as bias / d
    folded = bias / d[0] if n == 1 else None
    if conv.upsample:
        out = blur(conv.blur, F.conv_transpose2d(xs, weight, stride=2), folded)
    else:
        out = F.conv2d(xs, weight, folded, padding=conv.padding)
    del xs
    out.mul_(d[:, :, None, None])
    return out if n == 1 else out.add_(bias[:, None, None])


def folds_grad_scale(conv: ModulatedConv2d, grad: torch.Tensor, x: torch.Tensor) -> bool:
    """Whether :func:`frozen_backward` takes grad's per-channel factor on the weight.

    For one sample, off the Winograd route, where the weight is smaller than
    grad (the high-resolution layers): scaling the weight then costs less
    than a pass over grad.
    """
    n, _, h, w = grad.shape
    return n == 1 and conv.in_channel * conv.kernel_size**2 < h * w and not use_winograd(conv, x)


def frozen_backward(
    conv: ModulatedConv2d, grad: torch.Tensor, x: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """Gradient of ``blur?(conv(x))`` with respect to x, for grad's channels times ``scale``.

    Unmodulated, unscaled weight. ``scale`` rides on the weight where
    :func:`folds_grad_scale` says so; otherwise grad is scaled in place.

    Input: grad (N, C_out, H', W'), x (N, C_in, H, W), scale (N, C_out).
    Output: (N, C_in, H, W).
    """
    folded = folds_grad_scale(conv, grad, x)
    if not folded:
        grad = grad.mul_(scale[:, :, None, None])
    if use_winograd(conv, x):
        return winograd_conv3x3_backward(grad, _winograd_weight(conv, x))
    weight = conv_weight(conv, x)
    if conv.upsample:
        grad = blur_backward(conv.blur, grad)  # per channel: it commutes with the scale
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
        [conv.padding, conv.padding],
        [1, 1],
        False,
        [0, 0],
        1,
        [True, False, False],
    )[0]


# -- StyledConv ------------------------------------------------------------------------


def is_frozen(layer: StyledConv, x: torch.Tensor) -> bool:
    """Whether ``layer`` may run as :class:`FrozenStyledConv`: no gradient for its weights,
    no autocast, no compiling, symmetric blur pads."""
    conv = layer.conv
    if torch.compiler.is_compiling():
        return False
    if torch.is_grad_enabled() and (
        conv.weight.requires_grad
        or layer.noise.weight.requires_grad
        or layer.activate.bias.requires_grad
    ):
        return False
    if torch.is_autocast_enabled(x.device.type):
        return False
    return not conv.upsample or conv.blur.pad[0] == conv.blur.pad[1]


def styled_conv(
    layer: StyledConv, x: torch.Tensor, latent: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """``StyledConv.forward``: modulated convolution, noise, bias, leaky ReLU times sqrt(2).

    Input: x (N, C_in, H, W), latent (N, style_dim), noise (1 or N, 1, H', W').
    Output: (N, C_out, H', W').
    """
    conv = layer.conv
    if is_frozen(layer, x):
        s = conv.modulation(latent).to(x.dtype)
        d2 = (demodulation(conv, s) * SQRT2).to(x.dtype)
        terms = derived(
            conv,
            "noise_bias",
            (noise, layer.noise.weight, layer.activate.bias),
            lambda: (
                (noise * (layer.noise.weight * SQRT2)).to(x.dtype),
                (layer.activate.bias * SQRT2).to(x.dtype),
            ),
            (x.dtype,),
        )
        return FrozenStyledConv.apply(x, s * conv.scale, d2, conv, *terms)
    out, d = modulated_conv2d_parts(conv, x, latent)
    if d is None:
        return layer.activate(layer.noise(out, noise))
    # leaky_relu(z) * sqrt(2) == leaky_relu(sqrt(2) * z): the sqrt(2) rides on
    # the demodulation and the noise/bias terms, saving a pass over the output.
    dtype = out.dtype
    z = torch.addcmul(
        (layer.noise.weight * SQRT2).to(dtype) * noise.to(dtype),
        out,
        (d * SQRT2)[:, :, None, None].to(dtype),
    )
    z = z.add_((layer.activate.bias * SQRT2)[:, None, None].to(dtype))
    return F.leaky_relu_(z, 0.2)


def _dot_hw(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample, per-channel dot products over the pixels of two (N, C, H, W) tensors.

    Contiguous inputs go through one batched matmul, without a temporary the
    size of the inputs. Output: (N, C).
    """
    n, c, h, w = a.shape
    if a.is_contiguous() and b.is_contiguous():
        return torch.bmm(a.view(n * c, 1, h * w), b.view(n * c, h * w, 1)).view(n, c)
    return (a * b).sum((2, 3))


def _dot_map(a: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Dot products of every channel of a (N, C, H, W) with a (1, 1, H, W) map shared by
    the batch, or with each sample's own map of a (N, 1, H, W). Output: (N, C)."""
    n, c, h, w = a.shape
    if m.shape[0] != 1:
        if a.is_contiguous():
            return torch.bmm(a.view(n, c, h * w), m.reshape(n, h * w, 1)).view(n, c)
        return (a * m).sum((2, 3))
    m = m.reshape(h * w)
    if a.is_contiguous():
        return a.view(n, c, h * w) @ m
    if a.is_contiguous(memory_format=torch.channels_last):
        return (m @ a.permute(0, 2, 3, 1).reshape(n, h * w, c)).view(n, c)
    return (a * m.view(1, 1, h, w)).sum((2, 3))


class FrozenStyledConv(torch.autograd.Function):
    """StyledConv with frozen weights: gradients for x, s, d and the noise term only.

    Forward: ``a = leaky_relu(blur?(conv(x * s)) * d + noise_term + bias)``
    (d, noise_term and bias already carry the sqrt(2) gain). Only x, s, d and
    the output are kept for the backward pass; the pre-activation is
    recovered from the output, since ``z * leaky_relu'(z) = leaky_relu(z)``.
    The noise term gets a gradient when it requires one (projection tunes
    the noise maps): the pre-activation's, summed over channels (and over
    the batch for a shared map).

    Input: x (N, C_in, H, W), s (N, C_in), d (N, C_out), the layer's
    ``ModulatedConv2d``, noise_term (1 or N, 1, H', W'), bias (C_out,).
    Output: (N, C_out, H', W').
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
        out = frozen_forward(conv, x, s, d, bias)
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
        grad_noise = None
        if ctx.needs_input_grad[4]:
            grad_noise = ga.sum(1, keepdim=True)
            if noise_term.shape[0] != grad_noise.shape[0]:  # one map for the batch
                grad_noise = grad_noise.sum(0, keepdim=True)
        gx = frozen_backward(ctx.conv, ga, x, d)
        del ga
        grad_s = _dot_hw(gx, x)
        grad_x = gx.mul_(s[:, :, None, None]) if ctx.needs_input_grad[0] else None
        return grad_x, grad_s, grad_d, None, grad_noise, None


# -- ToRGB -------------------------------------------------------------------------------


def to_rgb(
    layer: ToRGB, x: torch.Tensor, latent: torch.Tensor, skip: torch.Tensor | None = None
) -> torch.Tensor:
    """``ToRGB.forward``: with 3 output channels it is cheaper to modulate the tiny weight
    than the activations, ``out = (w * s) @ x``, one batched matmul.

    Input: x (N, C, H, W), latent (N, style_dim), skip (N, 3, H/2, W/2) or None.
    Output: (N, 3, H, W).
    """
    conv = layer.conv
    s = conv.modulation(latent)
    weight = derived(
        conv, "rgb_weight", (conv.weight,), lambda: conv.weight[0, :, :, 0, 0] * conv.scale
    )
    ws = (weight[None] * s[:, None, :]).to(x.dtype)  # (N, 3, C)
    out = torch.einsum("noc,nchw->nohw", ws, x) + layer.bias.to(x.dtype)
    if skip is not None:
        out = out + upsample(layer.upsample, skip)
    return out
