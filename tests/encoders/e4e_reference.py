"""An independent reference of e4e's encoder forward, for parity tests.

Written the way e4e's ``Encoder4Editing.forward`` and pSp's ``forward``
compute it (models/encoders/psp_encoders.py, helpers.py, psp.py), as plain
functions over the checkpoint's state dict: every layer spelled out by hand
(batch norm from its formula, PReLU and LeakyReLU with ``torch.where``, the 1x1
max-pool shortcut as slicing, squeeze-and-excitation from channel means), the
W+ code filled in place as e4e does, and ``latent_avg`` added as pSp does.
It shares no code with ``soundguide.encoders``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

Tensor = torch.Tensor
State = dict[str, Tensor]

BN_EPS = 1e-5
# (in_channel, depth, stride) of IR-SE50's 24 units, as e4e's get_blocks(50) lists them
UNITS = (
    [(64, 64, 2), (64, 64, 1), (64, 64, 1)]
    + [(64, 128, 2)] + [(128, 128, 1)] * 3
    + [(128, 256, 2)] + [(256, 256, 1)] * 13
    + [(256, 512, 2)] + [(512, 512, 1)] * 2
)  # fmt: skip


def batch_norm(x: Tensor, s: State, p: str) -> Tensor:
    shape = (1, -1, 1, 1)
    mean = s[p + "running_mean"].view(shape)
    var = s[p + "running_var"].view(shape)
    return (x - mean) / torch.sqrt(var + BN_EPS) * s[p + "weight"].view(shape) + s[p + "bias"].view(
        shape
    )


def prelu(x: Tensor, weight: Tensor) -> Tensor:
    return torch.where(x >= 0, x, x * weight.view(1, -1, 1, 1))


def leaky_relu(x: Tensor) -> Tensor:
    return torch.where(x >= 0, x, 0.01 * x)  # nn.LeakyReLU()'s default slope


def se_module(x: Tensor, s: State, p: str) -> Tensor:
    pooled = x.mean(dim=(2, 3), keepdim=True)
    hidden = torch.relu(F.conv2d(pooled, s[p + "fc1.weight"]))
    return x * torch.sigmoid(F.conv2d(hidden, s[p + "fc2.weight"]))


def bottleneck_ir_se(x: Tensor, s: State, p: str, in_c: int, depth: int, stride: int) -> Tensor:
    if in_c == depth:
        shortcut = x[:, :, ::stride, ::stride]  # MaxPool2d(1, stride)
    else:
        shortcut = F.conv2d(x, s[p + "shortcut_layer.0.weight"], stride=stride)
        shortcut = batch_norm(shortcut, s, p + "shortcut_layer.1.")
    r = p + "res_layer."
    res = batch_norm(x, s, r + "0.")
    res = F.conv2d(res, s[r + "1.weight"], padding=1)
    res = prelu(res, s[r + "2.weight"])
    res = F.conv2d(res, s[r + "3.weight"], stride=stride, padding=1)
    res = batch_norm(res, s, r + "4.")
    res = se_module(res, s, r + "5.")
    return res + shortcut


def gradual_style_block(x: Tensor, s: State, p: str, spatial: int) -> Tensor:
    for j in range(int(math.log2(spatial))):
        c = f"{p}convs.{2 * j}."
        x = leaky_relu(F.conv2d(x, s[c + "weight"], s[c + "bias"], stride=2, padding=1))
    x = x.view(-1, 512)
    weight = s[p + "linear.weight"]
    return x @ (weight * (1 / math.sqrt(weight.shape[1]))).t() + s[p + "linear.bias"]


def upsample_add(x: Tensor, y: Tensor) -> Tensor:
    _, _, h, w = y.size()
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=True) + y


def e4e_forward(s: State, x: Tensor, style_count: int, stage: int = 18) -> Tensor:
    """``Encoder4Editing.forward``: (n, 3, 256, 256) -> (n, style_count, 512), no latent_avg.

    ``s`` holds the ``encoder.*`` keys without the prefix.
    """
    x = F.conv2d(x, s["input_layer.0.weight"], padding=1)
    x = prelu(batch_norm(x, s, "input_layer.1."), s["input_layer.2.weight"])
    for i, (in_c, depth, stride) in enumerate(UNITS):
        x = bottleneck_ir_se(x, s, f"body.{i}.", in_c, depth, stride)
        if i == 6:
            c1 = x
        elif i == 20:
            c2 = x
        elif i == 23:
            c3 = x

    def style(i: int, features: Tensor) -> Tensor:
        spatial = 16 if i < 3 else 32 if i < 7 else 64
        return gradual_style_block(features, s, f"styles.{i}.", spatial)

    w0 = style(0, c3)
    w = w0.repeat(style_count, 1, 1).permute(1, 0, 2)
    features = c3
    for i in range(1, min(stage + 1, style_count)):
        if i == 3:
            p2 = upsample_add(c3, F.conv2d(c2, s["latlayer1.weight"], s["latlayer1.bias"]))
            features = p2
        elif i == 7:
            p1 = upsample_add(p2, F.conv2d(c1, s["latlayer2.weight"], s["latlayer2.bias"]))
            features = p1
        w[:, i] += style(i, features)
    return w


def e4e_latents(s: State, latent_avg: Tensor, x: Tensor) -> Tensor:
    """pSp's encode with ``start_from_latent_avg``: ``codes + latent_avg.repeat(n, 1, 1)``."""
    codes = e4e_forward(s, x, latent_avg.shape[0])
    return codes + latent_avg.repeat(codes.shape[0], 1, 1)
