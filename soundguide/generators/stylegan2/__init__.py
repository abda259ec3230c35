"""rosinality's StyleGAN2 generator in pure PyTorch, for editing in W+.

- ``model.py``: the architecture, readable on its own as the specification
  (textbook forwards; module and parameter names are the checkpoints' keys);
- ``ops/``: the fast routes the model's layers take by default (modulated
  activations, a frozen-weight autograd Function, Winograd convolutions,
  cached derived weights), each beside its reference;
- ``checkpoint.py``: reading rosinality-format checkpoints.
"""

from __future__ import annotations

from .checkpoint import infer_stylegan2_config, load_stylegan2
from .model import (
    LatentShapeError,
    ModulatedConv2d,
    StyledConv,
    StyleGAN2Generator,
    ToRGB,
    channels_at,
)
from .ops.upfirdn2d import upfirdn2d
from .ops.winograd import winograd_conv3x3, winograd_conv3x3_backward, winograd_weight

__all__ = [
    "LatentShapeError",
    "ModulatedConv2d",
    "StyleGAN2Generator",
    "StyledConv",
    "ToRGB",
    "channels_at",
    "infer_stylegan2_config",
    "load_stylegan2",
    "upfirdn2d",
    "winograd_conv3x3",
    "winograd_conv3x3_backward",
    "winograd_weight",
]
