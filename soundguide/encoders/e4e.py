"""e4e (encoder4editing, Tov et al. 2021): face images -> StyleGAN2 W+ latents.

The network is e4e's ``Encoder4Editing(50, "ir_se")`` as its inference runs the
released ``e4e_ffhq_encode.pt`` (github.com/omertov/encoder4editing, MIT):

- ``input_layer`` and ``body``: IR-SE50 (:mod:`soundguide.encoders.irse`), 256 px
  in, with feature taps after body units 6 (``c1``: 128 channels, 64x64),
  20 (``c2``: 256 channels, 32x32) and 23, the last (``c3``: 512 channels, 16x16);
- a feature pyramid: ``p2 = up(c3) + latlayer1(c2)`` (32x32) and
  ``p1 = up(p2) + latlayer2(c1)`` (64x64), with 1x1 convolutions to 512
  channels and bilinear upsampling (``align_corners=True``);
- ``styles``: one :class:`GradualStyleBlock` per W+ layer; styles 0-2 read
  ``c3``, 3-6 read ``p2`` and 7 on read ``p1``. Each halves its map with
  stride-2 3x3 convolutions and LeakyReLU down to 1x1, then an equalized linear;
- the latent: style 0 is ``w0``, repeated on every layer, and styles 1 on add
  their deltas to their layer (e4e's "inference" progressive stage, 18: with
  more than 19 layers the layers past 18 keep ``w0``); then ``latent_avg``, the
  generator's mean latent saved with the encoder, is added.

The number of W+ layers is the generator's, ``2 * log2(size) - 2`` (18 at
1024 px, 14 at 256 px); e4e reads it off ``opts["stylegan_size"]``.

e4e's inference transform is resize to 256x256 (PIL bilinear), ``ToTensor``
and ``Normalize(0.5, 0.5)``; :func:`e4e_input` is its tensor form.

e4e is research code, not a package (it needs its CUDA ops and the whole pSp
training setup to import), hence this file; the IR-SE units are shared with
ArcFace.

Shapes: image (n, 3, H, W) in [-1, 1] -> input (n, 3, 256, 256) -> latent (n, n_styles, 512).
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from soundguide.core.checkpoints import (
    KnownWeights,
    check_state_dict,
    names_preview,
    read_checkpoint,
)
from soundguide.core.errors import CheckpointError, ImageError
from soundguide.encoders.irse import ir_se50_body, ir_se_input_layer

INPUT_SIZE = 256
STYLE_DIM = 512
C1_UNIT, C2_UNIT, C3_UNIT = 6, 20, 23
"""Body units after which e4e taps its 64x64, 32x32 and 16x16 features."""
COARSE_END, MIDDLE_END = 3, 7
"""Styles [0, 3) read c3 (16x16), [3, 7) read p2 (32x32), [7, n) read p1 (64x64)."""
INFERENCE_STAGE = 18
"""e4e's ``ProgressiveStage.Inference``: deltas are added to layers 1 .. min(18, n - 1)."""
FFHQ_STYLES = 18

E4E_FFHQ = KnownWeights(
    name="e4e-ffhq-encode",
    url="https://drive.usercontent.google.com/download?id=1cUv_reLE6k3604or78EranS7XzuVMWeO"
    "&export=download&confirm=t",
    filename="e4e_ffhq_encode.pt",
    license="MIT",
    description="e4e FFHQ inversion encoder (omertov/encoder4editing), the 'FFHQ Inversion' "
    "file of the e4e README; it also holds the 1024 px FFHQ StyleGAN2 decoder, "
    "which load_e4e never reads",
)
"""e4e's released FFHQ encoder (no published checksum: pinned on first download)."""


def n_styles_for(size: int) -> int:
    """The number of W+ layers of a StyleGAN2 generator of ``size`` px: ``2 * log2(size) - 2``."""
    return 2 * int(math.log2(size)) - 2


# -- the network ----------------------------------------------------------------------
# Attribute names (input_layer, body, styles, convs, linear, latlayer1, latlayer2) and
# the Sequential indices are the key names of e4e's checkpoints ("encoder." removed).


class EqualLinear(nn.Module):
    """StyleGAN2's equalized linear layer (no activation): ``x (W * lr_mul / sqrt(in))^T + b * lr_mul``.

    Input: (n, in_dim). Output: (n, out_dim).
    """

    def __init__(self, in_dim: int, out_dim: int, lr_mul: float = 1.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.zeros(out_dim))
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class GradualStyleBlock(nn.Module):
    """One style head: stride-2 3x3 convolutions + LeakyReLU down to 1x1, then a linear.

    ``log2(spatial)`` convolutions, each followed by PyTorch's default
    LeakyReLU (slope 0.01, as e4e has it, not StyleGAN's 0.2).

    Input: (n, channels, spatial, spatial). Output: (n, channels).
    """

    def __init__(self, spatial: int, channels: int = STYLE_DIM) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(int(math.log2(spatial))):
            layers += [nn.Conv2d(channels, channels, 3, stride=2, padding=1), nn.LeakyReLU()]
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(channels, channels, lr_mul=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.convs(x).flatten(1))


def upsample_add(top: torch.Tensor, lateral: torch.Tensor) -> torch.Tensor:
    """``top`` bilinearly resized to ``lateral``'s size (``align_corners=True``), plus ``lateral``.

    Input: (n, C, h, w) and (n, C, H, W). Output: (n, C, H, W).
    """
    size = lateral.shape[-2:]
    return F.interpolate(top, size=size, mode="bilinear", align_corners=True) + lateral


class Encoder4Editing(nn.Module):
    """The e4e encoder: IR-SE50 features -> ``w0`` + per-layer deltas + ``latent_avg``.

    The state dict is the ``latent_avg`` buffer and e4e's ``encoder.*`` keys
    without the prefix, so ``torch.save(model.state_dict())`` reloads with
    :func:`load_e4e`. ``latent_avg`` is zero until loaded.

    Input: (n, 3, 256, 256) images in [-1, 1] (see :func:`e4e_input`), any
    float dtype. Output: (n, n_styles, 512) W+ latents in the input's dtype.

    Args:
        n_styles: W+ layers of the generator the encoder was trained for:
            18 at 1024 px (FFHQ), ``2 * log2(size) - 2`` in general.
    """

    def __init__(self, n_styles: int = FFHQ_STYLES) -> None:
        super().__init__()
        if not isinstance(n_styles, int) or isinstance(n_styles, bool) or n_styles < 1:
            raise ValueError(f"n_styles must be a positive integer, got {n_styles!r}")
        # defined in the order of the checkpoint's keys
        self.input_layer = ir_se_input_layer()
        self.body = ir_se50_body()
        self.styles = nn.ModuleList(
            GradualStyleBlock(16 if i < COARSE_END else 32 if i < MIDDLE_END else 64)
            for i in range(n_styles)
        )
        self.latlayer1 = nn.Conv2d(256, STYLE_DIM, kernel_size=1)
        self.latlayer2 = nn.Conv2d(128, STYLE_DIM, kernel_size=1)
        self.register_buffer("latent_avg", torch.zeros(n_styles, STYLE_DIM))

    @property
    def n_styles(self) -> int:
        return len(self.styles)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, INPUT_SIZE, INPUT_SIZE):
            raise ImageError(
                f"e4e expects images of shape (n, 3, 256, 256), got {tuple(images.shape)}",
                hint="resize with e4e_input(images) first",
            )
        # computed in the weights' dtype, returned in the input's
        x = self.input_layer(images.to(self.latent_avg.dtype))
        for i, unit in enumerate(self.body):
            x = unit(x)
            if i == C1_UNIT:
                c1 = x
            elif i == C2_UNIT:
                c2 = x
        c3 = x  # after C3_UNIT, the last unit

        w0 = self.styles[0](c3)
        rows = [w0]
        features = c3
        last = min(INFERENCE_STAGE, self.n_styles - 1)
        for i in range(1, last + 1):
            # the pyramid levels are computed only when a style reads them, as in e4e
            if i == COARSE_END:
                features = p2 = upsample_add(c3, self.latlayer1(c2))
            elif i == MIDDLE_END:
                features = upsample_add(p2, self.latlayer2(c1))
            rows.append(w0 + self.styles[i](features))
        rows += [w0] * (self.n_styles - 1 - last)
        w = torch.stack(rows, dim=1) + self.latent_avg
        return w.to(images.dtype)


# -- the input ------------------------------------------------------------------------


def e4e_input(images: torch.Tensor) -> torch.Tensor:
    """e4e's inference transform for image tensors: resize to 256x256.

    e4e resizes PIL images with bilinear filtering, which widens the filter
    when shrinking (antialiasing); ``F.interpolate(..., antialias=True)`` is
    PyTorch's implementation of that same filter (kornia's antialiasing is a
    Gaussian blur, a different filter). It differs from e4e only by the 8-bit
    rounding of PIL's result. Images already 256x256 are returned as they are.
    Differentiable.

    Input: (n, 3, H, W) in [-1, 1] (``ToTensor`` + ``Normalize(0.5, 0.5)`` of an
    RGB image). Output: (n, 3, 256, 256).
    """
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        got = images.dtype if isinstance(images, torch.Tensor) else type(images).__name__
        raise ImageError(f"e4e_input expects a floating-point image tensor, got {got}")
    if images.dim() != 4 or images.shape[1] != 3 or min(images.shape) == 0:
        raise ImageError(
            f"e4e_input expects images of shape (n, 3, H, W), got {tuple(images.shape)}"
        )
    if tuple(images.shape[-2:]) == (INPUT_SIZE, INPUT_SIZE):
        return images
    return F.interpolate(
        images, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False, antialias=True
    )


# -- loading --------------------------------------------------------------------------

_EXPECTED = (
    "expected e4e's checkpoint (e4e_ffhq_encode.pt): a dict with 'state_dict' "
    "(encoder.* and decoder.* keys), 'latent_avg' and 'opts'"
)


def _looks_like(obj: Mapping[str, Any], state: Mapping[str, Any]) -> str:
    """What a checkpoint that is not e4e's seems to be, for the error message."""
    keys = [str(k).removeprefix("module.") for k in state]
    if "g_ema" in obj or "input.input" in keys or "conv1.conv.weight" in keys:
        return "a StyleGAN2 generator (rosinality format)"
    if any(k.startswith("output_layer.") for k in keys):
        return "ArcFace IR-SE50 (model_ir_se50.pth)"
    if any(k.startswith("decoder.") for k in keys):
        return "a pSp-style checkpoint without encoder.* keys"
    shown = names_preview([repr(str(k)) for k in obj], 5) or "none"
    return f"something else (top-level keys: {shown})"


def _options(obj: Mapping[str, Any]) -> dict[str, Any]:
    opts = obj.get("opts")
    if isinstance(opts, argparse.Namespace):
        return vars(opts)
    return dict(opts) if isinstance(opts, Mapping) else {}


def e4e_parts(
    obj: Any, source: str = "<state dict>"
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None, dict[str, Any]]:
    """``(encoder state dict, latent_avg or None, opts)`` of a loaded e4e checkpoint.

    Accepts e4e's saved form (``state_dict`` with ``encoder.*`` keys,
    ``latent_avg``, ``opts``), a pSp state dict with ``encoder.*`` keys, or an
    :class:`Encoder4Editing` state dict. Only the encoder's tensors are kept.
    Raises :class:`CheckpointError` saying what the object looks like when it
    is no e4e checkpoint.
    """
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"not an e4e checkpoint: {source} holds a {type(obj).__name__}; {_EXPECTED}"
        )
    inner = obj.get("state_dict")
    state = inner if isinstance(inner, Mapping) else obj
    opts = _options(obj)
    latent_avg = obj.get("latent_avg", state.get("latent_avg"))
    prefix = "encoder."
    encoder = {str(k)[len(prefix) :]: v for k, v in state.items() if str(k).startswith(prefix)}
    if not encoder and "styles.0.linear.weight" in state:  # an Encoder4Editing state dict
        encoder = {str(k): v for k, v in state.items() if k != "latent_avg"}
    if not encoder:
        raise CheckpointError(
            f"not an e4e checkpoint: {source} looks like {_looks_like(obj, state)}; {_EXPECTED}"
        )
    kind = opts.get("encoder_type", "Encoder4Editing")
    if kind != "Encoder4Editing":
        raise CheckpointError(
            f"not an e4e checkpoint: {source} holds a {kind} encoder (opts encoder_type), "
            "expected Encoder4Editing",
            hint="pSp's GradualStyleEncoder has e4e's keys but predicts every layer on its own",
        )
    bad = [k for k, v in encoder.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(
            f"checkpoint {source} is not a state dict: {names_preview(bad)} are not tensors"
        )
    if latent_avg is not None and not isinstance(latent_avg, torch.Tensor):
        raise CheckpointError(
            f"checkpoint {source}: latent_avg is a {type(latent_avg).__name__}, not a tensor"
        )
    return encoder, latent_avg, opts


def _n_styles(
    state: Mapping[str, torch.Tensor],
    latent_avg: torch.Tensor | None,
    opts: Mapping[str, Any],
    source: str,
) -> tuple[int, str]:
    """The number of W+ layers and where it came from: opts, else latent_avg, else the keys."""
    size = opts.get("stylegan_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 4 or size & (size - 1):
            raise CheckpointError(
                f"checkpoint {source}: opts stylegan_size is {size!r}, expected a power of two"
            )
        return n_styles_for(size), f"stylegan_size {size} in opts"
    if latent_avg is not None and latent_avg.dim() == 2:
        return int(latent_avg.shape[0]), "latent_avg"
    heads = {k.split(".")[1] for k in state if k.startswith("styles.") and k.count(".") >= 2}
    return max(len(heads), 1), "the styles.* keys"


def load_e4e(
    path_or_state: str | os.PathLike[str] | Mapping[str, Any],
    *,
    trust: bool = False,
    map_location: Any = "cpu",
) -> Encoder4Editing:
    """Build :class:`Encoder4Editing` from ``e4e_ffhq_encode.pt`` (a file) or a loaded checkpoint.

    Files are read with :func:`soundguide.core.checkpoints.read_checkpoint`
    (no pickled code unless ``trust``), memory-mapped: only the encoder's
    tensors are read, once, as they are copied into the network, and nothing
    of the checkpoint (the ``decoder.*`` generator in particular) is kept.
    The number of W+ layers comes from ``opts["stylegan_size"]``, else from
    ``latent_avg``. ``latent_avg`` must be there with shape (n_styles, 512),
    unless ``opts`` says ``start_from_latent_avg`` is off (e4e then adds
    nothing; the buffer stays zero).

    Raises :class:`CheckpointError` (one line) for a file that is not an e4e
    checkpoint (saying what it looks like), keys or shapes that do not fit,
    a missing or misshapen ``latent_avg``, and non-finite values. Returns the
    network in eval mode, without gradients, on the checkpoint's device.
    """
    from_file = not isinstance(path_or_state, Mapping)
    source, obj = read_checkpoint(
        path_or_state, trust=trust, map_location=map_location, mmap=from_file
    )
    state, latent_avg, opts = e4e_parts(obj, source)
    del obj  # the decoder's tensors (mapped, never read) go with it
    n_styles, origin = _n_styles(state, latent_avg, opts, source)
    expected = (n_styles, STYLE_DIM)
    if latent_avg is None:
        if opts.get("start_from_latent_avg", True):
            raise CheckpointError(
                f"checkpoint {source} has no latent_avg: e4e's latents are offsets from the "
                f"generator's mean latent, saved as latent_avg {expected}",
                hint=_EXPECTED,
            )
        latent_avg = torch.zeros(expected)
    elif tuple(latent_avg.shape) != expected:
        raise CheckpointError(
            f"checkpoint {source}: latent_avg has shape {tuple(latent_avg.shape)}, "
            f"expected {expected} ({n_styles} styles from {origin})"
        )
    elif not opts.get("start_from_latent_avg", True):
        latent_avg = torch.zeros(expected)  # e4e saves it, but does not add it
    state["latent_avg"] = latent_avg

    with torch.device("meta"):  # shapes only: every value is loaded below
        model = Encoder4Editing(n_styles)
    check_state_dict(
        model.state_dict(),
        state,
        source=source,
        what=f"the e4e encoder with {n_styles} styles ({origin})",
        hint="expected the encoder.* keys of e4e_ffhq_encode.pt",
    )
    device = state["input_layer.0.weight"].device
    model = model.to_empty(device=device)
    # copies: nothing returned is a view of the (mapped) file
    model.load_state_dict(state, strict=True)
    del state, latent_avg
    bad = [
        name
        for name, tensor in model.state_dict().items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]
    if bad:
        raise CheckpointError(
            f"checkpoint {source} has non-finite values (NaN or inf) in {names_preview(bad)}",
            hint="the file is corrupt, or comes from a training run that diverged",
        )
    return model.eval().requires_grad_(False)
