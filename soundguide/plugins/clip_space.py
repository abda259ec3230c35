"""What the audio, text and image guidances share: the CLIP image space.

Third-party sources that live in CLIP space subclass :class:`CLIPGuidance`
(``soundguide.CLIPGuidance``) with a config derived from
:class:`CLIPGuidanceConfig`: they get ``clip_model``, the preprocessing, the
loss and the ``paper`` preset like the built-ins, and :attr:`CLIPGuidance.space`
(:func:`clip_space`) makes every source with the same CLIP settings share one
encoder, so mixing them costs one image encoding per step.

Also a plugin module: it registers OpenAI's CLIP models as known weights,
kept where the ``clip`` package keeps them (``~/.cache/clip``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field

import soundguide
from soundguide import Guidance, GuidanceConfig, KnownWeights, WeightsRef

PAPER_SCALE = math.exp(0.07)
"""The original code's ``1 - exp(0.07) * cos`` guidance loss."""

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def clip_space(
    clip_model: str = "ViT-B/32",
    clip_preprocess: str = "clip",
    clip_cutouts: int = 0,
    clip_dtype: str = "float32",
) -> str:
    """The space key of CLIP image embeddings made with these settings.

    Guidances whose :attr:`~soundguide.Guidance.space` is the same key share
    one encoder (built by the first of them) and one image encoding per step.
    The defaults are those of the built-in ``audio``, ``text`` and ``image``
    sources: ``clip_space()`` is ``"clip:ViT-B/32:clip:cutouts=0:float32"``.
    ``clip_model`` is compared as written: a model name and a path to the same
    file are two spaces.
    """
    return f"clip:{clip_model}:{clip_preprocess}:cutouts={clip_cutouts}:{clip_dtype}"


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
        return clip_space(c.clip_model, c.clip_preprocess, c.clip_cutouts, c.clip_dtype)

    def clip_path(self) -> Path:
        """The local CLIP file (a known model name is downloaded on first use)."""
        return self.context.resolve_weights(self.config.clip_model)

    def build_encoder(self):
        """One CLIP encoder per space; its text tower is read only if a text target needs it.

        The CLIP network may be shared with other runs (``RunContext.shared``);
        the encoder around it (the cutouts' random generator) is this run's own.
        """
        from soundguide.encoders.clip import CLIPEncoder

        c = self.config
        return CLIPEncoder.load(
            self.clip_path(),
            device=self.context.device,
            dtype=_DTYPES[c.clip_dtype],
            trust=self.context.trust_checkpoint,
            lazy_text=True,
            preprocess=c.clip_preprocess,
            cutouts=c.clip_cutouts,
            share=self.context.shared,
        )

    def loss(self, embedding: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        from soundguide.core.losses import cosine_distance

        scale = PAPER_SCALE if self.config.loss == "paper" else 1.0
        return cosine_distance(embedding, target.to(embedding.dtype), scale=scale)

    def files(self) -> list[Path]:
        """The CLIP file (subclasses add their own inputs), for ``run.json``."""
        return [self.clip_path()]

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


@soundguide.hookimpl
def register_weights(registry):
    from soundguide.encoders.clip_weights import CLIP_CACHE, CLIP_MODELS, CLIP_URL

    for name, tail in CLIP_MODELS.items():
        digest, filename = tail.split("/")
        registry.add(
            KnownWeights(
                name=name,
                url=CLIP_URL + tail,
                filename=filename,
                license="MIT",
                description=f"OpenAI CLIP {name} (TorchScript archive, read without running it)",
                sha256=digest,
                folder=CLIP_CACHE,
            )
        )
