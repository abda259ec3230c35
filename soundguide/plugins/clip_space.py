"""What the audio, text and image guidances share: the CLIP image space.

Not a plugin itself. A third-party source that lives in CLIP space can
subclass :class:`CLIPGuidance` the same way: sources with the same CLIP
model and preprocessing share one encoder, so mixing them costs one image
encoding per step.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field

from soundguide import Guidance, GuidanceConfig, WeightsRef

PAPER_SCALE = math.exp(0.07)
"""The original code's ``1 - exp(0.07) * cos`` guidance loss."""

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class CLIPGuidanceConfig(GuidanceConfig):
    clip_model: WeightsRef = Field(
        "ViT-B/32", description="CLIP model name (downloaded by the clip package) or a local file."
    )
    clip_preprocess: Literal["clip", "paper"] = Field(
        "clip",
        description="'clip': resize + CLIP normalization; 'paper': the original code's "
        "x7 nearest upsampling + average pooling, no normalization.",
    )
    clip_cutouts: int = Field(0, ge=0, description="Random cutouts averaged per step (0: off).")
    clip_dtype: Literal["float32", "float16", "bfloat16"] = Field(
        "float32", description="CLIP weights' dtype; float32 unless you know you want less."
    )
    loss: Literal["cosine", "paper"] = Field(
        "cosine", description="'cosine': 1 - cos; 'paper': 1 - exp(0.07) * cos (the original code)."
    )


class CLIPGuidance(Guidance):
    """Base of guidance sources compared with generator images in CLIP space."""

    config: CLIPGuidanceConfig
    presets = {"paper": {"clip_preprocess": "paper", "loss": "paper", "clip_dtype": "float32"}}

    @property
    def space(self) -> str:
        c = self.config
        return f"clip:{c.clip_model}:{c.clip_preprocess}:cutouts={c.clip_cutouts}:{c.clip_dtype}"

    def build_encoder(self):
        """One CLIP encoder per space; its text tower is read only if a text target needs it."""
        from soundguide.encoders.clip import CLIPEncoder

        c = self.config
        return CLIPEncoder.load(
            c.clip_model,
            device=self.context.device,
            dtype=_DTYPES[c.clip_dtype],
            trust=self.context.trust_checkpoint,
            lazy_text=True,
            preprocess=c.clip_preprocess,
            cutouts=c.clip_cutouts,
        )

    def loss(self, embedding: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        from soundguide.core.losses import cosine_distance

        scale = PAPER_SCALE if self.config.loss == "paper" else 1.0
        return cosine_distance(embedding, target.to(embedding.dtype), scale=scale)

    def clip_key(self) -> dict[str, Any]:
        """What a CLIP-side target depends on, for :meth:`RunContext.cached_tensor`."""
        from soundguide.core.files import sha256_file

        c = self.config
        model = c.clip_model
        try:
            model = f"{model}@{sha256_file(model)}"
        except OSError:
            pass  # a model name: the clip package pins the file by its own checksum
        return {
            "clip_model": model,
            "clip_dtype": c.clip_dtype,
            "clip_preprocess": c.clip_preprocess,
        }


class FileSources:
    """For guidances whose ``config.path`` is one file or a list with one per batch item."""

    config: Any

    @property
    def paths(self) -> list[Path]:
        p = self.config.path
        return list(p) if isinstance(p, list) else [p]

    @property
    def num_items(self) -> int | None:
        return len(self.paths) if isinstance(self.config.path, list) else None

    def one_or_all(self, targets: torch.Tensor) -> torch.Tensor:
        """(N, D) targets, one per path: all of them for a list, the single (D,) one otherwise."""
        return targets if isinstance(self.config.path, list) else targets[0]
