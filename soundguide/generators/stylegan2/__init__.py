"""rosinality's StyleGAN2 generator, in pure PyTorch (see model.py)."""

from __future__ import annotations

from .model import (
    LatentShapeError,
    ModulatedConv2d,
    StyledConv,
    StyleGAN2Generator,
    channels_at,
    infer_stylegan2_config,
    load_stylegan2,
    upfirdn2d,
    winograd_conv3x3,
    winograd_conv3x3_backward,
    winograd_weight,
)

__all__ = [
    "LatentShapeError",
    "ModulatedConv2d",
    "StyleGAN2Generator",
    "StyledConv",
    "channels_at",
    "infer_stylegan2_config",
    "load_stylegan2",
    "upfirdn2d",
    "winograd_conv3x3",
    "winograd_conv3x3_backward",
    "winograd_weight",
]
