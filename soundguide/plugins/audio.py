"""Guidance ``audio``: pull the image towards the SoundCLIP embedding of a sound.

SoundCLIP encodes audio into CLIP ViT-B/32's image-text space, so an audio
source mixes with text and image sources by weight. The embedding is computed
once per run (and cached on disk by the file's content and the settings).
A list of paths gives one target per batch item. Files are never decoded
whole: only the 10 s window (or, with ``crop = "windows"``, each window in
turn) is read, so a file's length costs no memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

import soundguide
from soundguide import ConfigPath, Seed, WeightsRef
from soundguide.plugins.clip_space import CLIPGuidance, CLIPGuidanceConfig, FileSources


class AudioGuidance(FileSources, CLIPGuidance):
    class Config(CLIPGuidanceConfig):
        type: Literal["audio"] = "audio"
        path: ConfigPath | list[ConfigPath] = Field(
            description="An audio file (WAV, FLAC, OGG, MP3...), or a list: one per batch item."
        )
        encoder: WeightsRef = Field(
            "soundclip-resnet18-57",
            description="SoundCLIP weights: a known-weights name or a checkpoint file.",
        )
        crop: Literal["start", "center", "random", "windows"] = Field(
            "start",
            description="Which 10 s of a longer clip: start, center, random (seeded) or "
            "windows (all windows, embeddings averaged). Only the audio embedded is decoded: "
            "start, center and random read one 10 s window of a file of any length.",
        )
        crop_seed: Seed = Field(0, description="Seed of the random crop.")
        max_seconds: float = Field(
            600.0,
            gt=0,
            description='Longest file crop = "windows" embeds (its time grows with the '
            "length); start, center and random take files of any length.",
        )

    config: Config
    presets = {"paper": {**CLIPGuidance.presets["paper"], "crop": "start"}}

    def __init__(self, config: Config, context) -> None:
        super().__init__(config, context)
        from soundguide.core.errors import AudioError

        for path in self.paths:
            if not path.is_file():
                what = "is a directory" if path.is_dir() else "does not exist"
                raise AudioError(
                    f"audio source {path} {what}",
                    hint="relative paths resolve against the config's folder",
                )

    def encoder_path(self) -> Path:
        return self.context.resolve_weights(self.config.encoder)

    def target(self, encoder) -> torch.Tensor:
        from soundguide.core.files import sha256_file

        c = self.config
        weights = self.encoder_path()
        key = {
            "audio": [sha256_file(p) for p in self.paths],
            "encoder": sha256_file(weights),
            "crop": c.crop,
            "crop_seed": c.crop_seed if c.crop == "random" else None,
            # each 10 s window normalized by its own loudest bin (targets cached
            # before, with the whole clip's, differ for clips over 10 s)
            "db_reference": "window",
        }
        target = self.context.cached_tensor(
            "audio_targets",
            key,
            lambda: self._embed(weights),
            shape=(len(self.paths), encoder.embed_dim),
        )
        return self.one_or_all(target)

    def _embed(self, weights: Path) -> torch.Tensor:
        from soundguide.core.interfaces import model_key
        from soundguide.encoders.soundclip import embed_audio, load_soundclip

        c, ctx = self.config, self.context
        trust = ctx.trust_checkpoint
        model = ctx.shared(
            model_key("soundclip", weights, trust=trust, device=ctx.device),
            lambda: load_soundclip(weights, trust=trust).to(ctx.device),
        )
        generator = torch.Generator().manual_seed(c.crop_seed)
        return torch.stack(
            [
                embed_audio(model, p, crop=c.crop, generator=generator, max_seconds=c.max_seconds)
                for p in self.paths
            ]
        )

    def files(self) -> list[Path]:
        return [*self.paths, self.encoder_path(), *super().files()]

    @classmethod
    def audio_embedder(
        cls, encoder: str, context, crop: str, *, pad: str = "end", db_reference: str = "window"
    ):
        """SoundCLIP for ``soundguide zeroshot`` and ``probe`` (see ``Guidance.audio_embedder``);
        ``pad`` and ``db_reference`` place clips on its 864-frame canvas (``--protocol``)."""
        from soundguide.evaluation.embedders import SoundCLIPEmbedder

        path = context.resolve_weights(encoder)
        return SoundCLIPEmbedder.from_checkpoint(
            path,
            crop=crop,
            pad=pad,
            db_reference=db_reference,
            device=context.device,
            trust=context.trust_checkpoint,
        )


@soundguide.hookimpl
def register_guidances(registry):
    registry.add(AudioGuidance)


@soundguide.hookimpl
def register_weights(registry):
    from soundguide.encoders.soundclip import RESNET18_57

    registry.add(RESNET18_57)
