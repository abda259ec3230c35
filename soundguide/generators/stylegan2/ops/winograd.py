"""3x3 convolutions by Winograd F(4x4, 3x3), and their exact adjoint.

The reference is ``F.conv2d(x, w, padding=1)`` (and its input gradient),
which the tests compare with. Winograd takes four times fewer
multiplications; its input and output transforms are small matrix products
that only pay for themselves on wide layers (the caller decides where:
:func:`soundguide.generators.stylegan2.ops.modulated.use_winograd`).
"""

from __future__ import annotations

import functools

import torch
from torch.nn import functional as F

from .layout import channels_last_copy, is_channels_last

__all__ = [
    "WINOGRAD_POINTS",
    "winograd_conv3x3",
    "winograd_conv3x3_backward",
    "winograd_weight",
]

WINOGRAD_POINTS = (0.0, -1.0, 1.0, 0.5, -2.0)

WINOGRAD_NCHW_PIXELS = 4096
"""Above this many pixels per channel an NCHW batch is converted to channels-last for
the tile gathers, whose strided NCHW reads then cost more than the conversion."""

WINOGRAD_CHUNK_BYTES = 8 << 20
"""The tile rows are worked through in chunks whose transformed tiles take about this
much: the transient memory stays small and the transforms run in cache."""


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
    """3x3 weights in the F(4x4, 3x3) domain, for :func:`winograd_conv3x3`.

    One matrix product with kron(G, G) in the weight's dtype (float64
    intermediates would hold 4x the layer's weights twice over).
    Input: (C_out, C_in, 3, 3). Output: (36, C_out, C_in).
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


def winograd_conv3x3(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``conv2d(x, w, padding=1)`` by Winograd F(4x4, 3x3), with ``u = winograd_weight(w)``.

    The tiles are gathered channels-last (whole channel vectors at a time),
    except for small NCHW batches, where converting there costs more than it
    saves.

    Input: x (N, C_in, H, W) with H and W multiples of 4, u (36, C_out, C_in).
    Output: (N, C_out, H, W) in x's memory format.
    """
    n, c, h, w = x.shape
    if is_channels_last(x):
        return _winograd_nhwc(x, u, torch.channels_last)
    if n * h * w > WINOGRAD_NCHW_PIXELS:
        return _winograd_nhwc(channels_last_copy(x.contiguous()), u)
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

    Computed channels-last, where the tiles' overlaps are added.

    Input: grad (N, C_out, H, W), u (36, C_out, C_in).
    Output: (N, C_in, H, W) in grad's memory format.
    """
    if is_channels_last(grad):
        return _winograd_nhwc_backward(grad, u, torch.channels_last)
    return _winograd_nhwc_backward(channels_last_copy(grad.contiguous()), u)


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
        # batch of (36, 36) @ (36, C) products (faster than one (36, 36) @
        # (36, tiles * C) product over a frequency-major gather)
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
