"""ArcFace IR-SE50: the face-recognition network behind the identity regularizer.

The architecture is TreB1eN's InsightFace_Pytorch ``Backbone(input_size=112,
num_layers=50, mode="ir_se", drop_ratio=0.6)``, the one pSp, e4e, StyleCLIP and
the paper's original code load ``model_ir_se50.pth`` into:

- ``input_layer``: 3x3 convolution 3 -> 64, batch norm, PReLU;
- ``body``: 24 improved-residual units with squeeze-and-excitation, in stages of
  3, 4, 14 and 3 units of 64, 128, 256 and 512 channels; each stage's first
  unit has stride 2 (112 -> 56 -> 28 -> 14 -> 7 px);
- ``output_layer``: batch norm, dropout, flatten, linear 512*7*7 -> 512, batch norm;
- the output is L2-normalized.

The input layer and the body are :mod:`soundguide.encoders.irse`'s, shared with e4e.

The face crop (:func:`face_crop`) is the one of the original code's ID loss,
tuned to aligned FFHQ faces at 256 px: pool to 256x256 if needed, keep rows
35:223 and columns 32:220, pool to 112x112. It means nothing for other domains.

Shapes: image (n, 3, H, W) in [-1, 1] -> crop (n, 3, 112, 112) -> embedding (n, 512).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from soundguide.core.checkpoints import (
    KnownWeights,
    check_state_dict,
    read_checkpoint,
    unwrap_state_dict,
)
from soundguide.core.errors import ImageError
from soundguide.encoders.irse import IR_SE50_STAGES, ir_se50_body, ir_se_input_layer

INPUT_SIZE = 112
EMBED_DIM = 512
ALIGNED_SIZE = 256
"""The original code pools every image to this size before cropping."""
CROP_ROWS = (35, 223)
CROP_COLS = (32, 220)

ARCFACE_IR_SE50 = KnownWeights(
    name="arcface-ir-se50",
    url="https://drive.usercontent.google.com/download?id=1KW7bjndL3QG3sxBbZxreGHigcCCpsDgn"
    "&export=download&confirm=t",
    filename="model_ir_se50.pth",
    license="MIT",
    description="ArcFace IR-SE50 face recognition (TreB1eN/InsightFace_Pytorch), "
    "the model_ir_se50.pth linked from the pSp README",
)
"""The IR-SE50 weights pSp, e4e and StyleCLIP use for their ID loss (no published
checksum: pinned on first download)."""


# -- the network ----------------------------------------------------------------------
# Attribute names (input_layer, body, output_layer) and the Sequential indices are
# the key names of model_ir_se50.pth; the units are in irse.py, shared with e4e.


class ArcFaceIRSE50(nn.Module):
    """ArcFace IR-SE50 face embedding network.

    Input: (n, 3, 112, 112) aligned face crops in [-1, 1] (see :func:`face_crop`),
    any float dtype. Output: (n, 512) L2-normalized embeddings in the input's dtype.

    Args:
        drop_ratio: dropout before the final linear layer (active in training only).
    """

    def __init__(self, drop_ratio: float = 0.6) -> None:
        super().__init__()
        # defined in the order of the checkpoint's keys
        self.input_layer = ir_se_input_layer()
        final = IR_SE50_STAGES[-1][0]
        side = INPUT_SIZE // 2 ** len(IR_SE50_STAGES)
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(final),
            nn.Dropout(drop_ratio),
            nn.Flatten(),
            nn.Linear(final * side * side, EMBED_DIM),
            nn.BatchNorm1d(EMBED_DIM, affine=True),
        )
        self.body = ir_se50_body()

    def forward(self, face: torch.Tensor) -> torch.Tensor:
        if face.dim() != 4 or tuple(face.shape[1:]) != (3, INPUT_SIZE, INPUT_SIZE):
            raise ImageError(
                f"ArcFace expects face crops of shape (n, 3, 112, 112), got {tuple(face.shape)}"
            )
        # computed in the weights' dtype, returned in the input's (generators may run in bf16)
        x = face.to(self.input_layer[0].weight.dtype)
        x = self.output_layer(self.body(self.input_layer(x)))
        return F.normalize(x, dim=1).to(face.dtype)


# -- the crop and the loss --------------------------------------------------------------


def face_crop(image: torch.Tensor) -> torch.Tensor:
    """The original code's face crop for aligned FFHQ images.

    Images not 256x256 are first adaptive-average-pooled to 256x256 (the
    original checks only the height; generators make square images), then rows
    35:223 and columns 32:220 are kept and pooled to 112x112. Differentiable.

    Input: (n, 3, H, W) in [-1, 1]. Output: (n, 3, 112, 112).
    """
    if not isinstance(image, torch.Tensor) or not image.is_floating_point():
        got = image.dtype if isinstance(image, torch.Tensor) else type(image).__name__
        raise ImageError(f"face_crop expects a floating-point image tensor, got {got}")
    if image.dim() != 4 or image.shape[1] != 3 or min(image.shape) == 0:
        raise ImageError(
            f"face_crop expects images of shape (n, 3, H, W), got {tuple(image.shape)}"
        )
    if tuple(image.shape[-2:]) != (ALIGNED_SIZE, ALIGNED_SIZE):
        image = F.adaptive_avg_pool2d(image, ALIGNED_SIZE)
    crop = image[:, :, CROP_ROWS[0] : CROP_ROWS[1], CROP_COLS[0] : CROP_COLS[1]]
    return F.adaptive_avg_pool2d(crop, INPUT_SIZE)


def face_features(network: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """Identity embeddings of generator images: ``network(face_crop(image))``.

    Input: (n, 3, H, W) in [-1, 1]. Output: (n, 512), unit norm.
    """
    return network(face_crop(image))


def identity_loss(features: torch.Tensor, source_features: torch.Tensor) -> torch.Tensor:
    """``1 - cos(features, source_features)`` per item (the original ID loss per image).

    Input: (n, 512) and (n, 512) or (512,). Output: (n,), 0 for the same face.
    """
    from soundguide.core.losses import cosine_distance

    return cosine_distance(features, source_features)


# -- loading --------------------------------------------------------------------------


def arcface_state_dict(obj: Any, source: str = "<state dict>") -> dict[str, torch.Tensor]:
    """The network's state dict inside a loaded checkpoint, without a ``module.`` prefix.

    Raises :class:`CheckpointError` when ``obj`` is not a mapping of tensors.
    """
    return unwrap_state_dict(obj, source)


def load_arcface(
    path_or_state_dict: str | os.PathLike[str] | Mapping[str, Any],
    *,
    trust: bool = False,
    map_location: Any = "cpu",
) -> ArcFaceIRSE50:
    """Build :class:`ArcFaceIRSE50` from ``model_ir_se50.pth`` (a file) or a state dict.

    Files are read with :func:`soundguide.core.checkpoints.load_checkpoint`
    (no pickled code unless ``trust``). Loading is strict: missing,
    unexpected or wrongly shaped keys raise one :class:`CheckpointError` line
    naming them. Returns the network in eval mode, without gradients.
    """
    source, obj = read_checkpoint(path_or_state_dict, trust=trust, map_location=map_location)
    state = arcface_state_dict(obj, source)
    model = ArcFaceIRSE50()
    check_state_dict(
        model.state_dict(),
        state,
        source=source,
        what="ArcFace IR-SE50",
        hint="expected the keys of model_ir_se50.pth (input_layer.*, body.*, output_layer.*)",
    )
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False)
