"""The contrastive objective: symmetric InfoNCE terms against text, a SpecAugment view
and (optionally) video frames, with a CLIP-style temperature.

``total = sum_k w_k * (CE(s * x y^T) + CE(s * y x^T)) / 2  /  sum_k w_k`` over the
active terms ``k`` (audio-text, audio-augmented, audio-image), on L2-normalized
embeddings, with targets on the diagonal. With the paper's settings (weights 1,
1, 0 and the fixed scale ``s = exp(0.07)``) this is the original code's
``(audio-text + text-audio + audio-aug + aug-audio) / 4``.

The scale is ``exp(logit_scale)``, clamped at 100 as in CLIP; ``logit_scale``
is learnable (init ``log(1 / 0.07)``) or a fixed buffer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from soundguide.core.errors import ConfigError

CLIP_INIT = math.log(1 / 0.07)
PAPER_LOGIT_SCALE = 0.07
"""The original code scales logits by ``exp(0.07)`` (about 1.07), fixed."""
MAX_SCALE = 100.0


def info_nce(x: torch.Tensor, y: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """Symmetric InfoNCE with diagonal targets: ``(CE(s x y^T) + CE(s y x^T)) / 2``.

    Input: x, y (N, D), L2-normalized. Output: () float32.
    """
    logits = scale * x.float() @ y.float().T
    targets = torch.arange(x.shape[0], device=x.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


class ContrastiveLoss(nn.Module):
    """The training objective, holding the temperature.

    Args:
        learnable_scale: learn ``logit_scale`` (a parameter) or keep it fixed (a buffer).
        logit_scale: initial (or fixed) value of ``log(scale)``.
        text_weight, augment_weight, image_weight: term weights (0 turns a term off).
    """

    def __init__(
        self,
        *,
        learnable_scale: bool = True,
        logit_scale: float = CLIP_INIT,
        text_weight: float = 1.0,
        augment_weight: float = 1.0,
        image_weight: float = 1.0,
    ) -> None:
        super().__init__()
        weights = (text_weight, augment_weight, image_weight)
        if any(w < 0 for w in weights) or text_weight + augment_weight + image_weight <= 0:
            raise ConfigError(
                f"loss weights must be >= 0 and not all 0, got text={text_weight}, "
                f"augment={augment_weight}, image={image_weight}"
            )
        value = torch.tensor(float(logit_scale))
        if learnable_scale:
            self.logit_scale = nn.Parameter(value)
        else:
            self.register_buffer("logit_scale", value)
        self.text_weight = float(text_weight)
        self.augment_weight = float(augment_weight)
        self.image_weight = float(image_weight)

    @property
    def scale(self) -> torch.Tensor:
        """``exp(logit_scale)``, at most 100."""
        return self.logit_scale.clamp(max=math.log(MAX_SCALE)).exp()

    def forward(
        self,
        audio: torch.Tensor,
        augmented: torch.Tensor,
        text: torch.Tensor,
        image: torch.Tensor | None = None,
        has_image: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Input: audio, augmented (N, D) unnormalized; text (N, D) and image (N, D')
        normalized; has_image (N,) bool. Output: (total (), {term name: ()})."""
        audio = F.normalize(audio.float(), dim=-1)
        augmented = F.normalize(augmented.float(), dim=-1)
        scale = self.scale
        terms: dict[str, torch.Tensor] = {}
        weights: dict[str, float] = {}
        if self.text_weight > 0:
            terms["text"], weights["text"] = info_nce(audio, text, scale), self.text_weight
        if self.augment_weight > 0:
            terms["augment"] = info_nce(audio, augmented, scale)
            weights["augment"] = self.augment_weight
        if self.image_weight > 0 and image is not None and has_image is not None:
            rows = has_image.bool()
            if int(rows.sum()) >= 2:
                terms["image"] = info_nce(
                    audio[rows], F.normalize(image[rows].float(), dim=-1), scale
                )
                weights["image"] = self.image_weight
        total = sum(weights[k] * terms[k] for k in terms) / sum(weights.values())
        return total, terms
