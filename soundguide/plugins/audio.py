"""Guidance ``audio``: pull the image towards the SoundCLIP embedding of a sound.

SoundCLIP encodes audio into CLIP ViT-B/32's image-text space, so an audio
source mixes with text and image sources by weight. The embedding is computed
once per run (and cached on disk by the file's content and the settings).
A list of paths gives one target per batch item. Files are never decoded
whole: only the 10 s window (or, with ``crop = "windows"``, each window in
turn) is read, so a file's length costs no memory.

``over_time`` makes the source time-resolved, for ``soundguide video``: one
target per video frame, from the window around that frame's time (see
:mod:`soundguide.video.targets`). A still edit refuses it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, model_validator

import soundguide
from soundguide import ConfigPath, Seed, WeightsRef
from soundguide.core.interfaces import StrictModel
from soundguide.plugins.clip_space import CLIPGuidance, CLIPGuidanceConfig, FileSources

MAX_WINDOW = 60.0
"""Longest ``over_time.window`` in seconds (SoundCLIP sees 10.03 s; longer windows are cropped)."""


class OverTime(StrictModel):
    """How a recording becomes one target per video frame (``soundguide video``)."""

    window: float = Field(
        10.03,
        gt=0,
        le=MAX_WINDOW,
        description="Seconds of sound around each frame's time that give its target (10.03: "
        "SoundCLIP's 864 frames; shorter windows are padded as short clips are, longer "
        "ones cropped to 864 frames).",
    )
    fps: float = Field(12.0, gt=0, le=240, description="Video frames (targets) per second.")
    hop: float | None = Field(
        None, gt=0, description="Seconds between frames: another way to say 1 / fps."
    )
    smoothing: Literal["none", "moving_average", "ema"] = Field(
        "ema",
        description="How embeddings are smoothed in time: none, moving_average (a centred box "
        "tau seconds wide) or ema (exponential, time constant tau seconds).",
    )
    tau: float = Field(0.5, ge=0, le=MAX_WINDOW, description="Smoothing time in seconds.")
    batch: int = Field(16, ge=1, le=1024, description="Windows encoded together.")

    @model_validator(mode="after")
    def _one_rate(self) -> OverTime:
        if self.hop is not None:
            if "fps" in self.model_fields_set:
                raise ValueError("set fps or hop (seconds between frames), not both")
            if 1.0 / self.hop > 240:
                raise ValueError(f"hop {self.hop:g} s makes more than 240 frames per second")
        return self

    @property
    def rate(self) -> float:
        """Frames per second: ``fps``, or ``1 / hop``."""
        return 1.0 / self.hop if self.hop is not None else self.fps


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
        over_time: OverTime | None = Field(
            None,
            description="Time-resolved targets for `soundguide video` (one per frame); "
            "a still edit refuses it.",
        )

        @model_validator(mode="after")
        def _one_recording(self):
            if self.over_time is not None and isinstance(self.path, list):
                raise ValueError("over_time takes one recording (path), not a list")
            return self

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
        from soundguide.core.errors import ConfigError
        from soundguide.core.files import sha256_file

        c = self.config
        if c.over_time is not None:
            raise ConfigError(
                "audio guidance: over_time gives one target per video frame; "
                "a still edit takes one window (crop)",
                hint="run it with `soundguide video`, or remove over_time",
            )
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

    def frame_targets(self, frames: int | None = None) -> torch.Tensor:
        """Time-resolved targets (``over_time``, default settings if unset): (frames, D),
        one per video frame of the recording (all of them by default), L2-normalized.

        The mel power is computed once and sliced per frame, windows are encoded
        ``over_time.batch`` at a time (:mod:`soundguide.video.targets`); cached on
        disk by the file's content, the encoder and the settings.
        """
        from soundguide.core.files import sha256_file
        from soundguide.encoders.audio import AudioFile
        from soundguide.encoders.soundclip import SAMPLE_RATE
        from soundguide.video import targets as tt

        over = self.config.over_time or OverTime()
        path = self.paths[0]
        with AudioFile(path, SAMPLE_RATE) as source:
            total = frames or tt.frame_count(source.num_samples / SAMPLE_RATE, over.rate)
        weights = self.encoder_path()
        key = {
            "audio": sha256_file(path),
            "encoder": sha256_file(weights),
            "over_time": over.model_dump(mode="json"),
            "fps": over.rate,
            "frames": total,
            "frame_encoder": type(self).__qualname__,
            "version": 1,
        }
        return self.context.cached_tensor(
            "audio_frame_targets", key, lambda: self._embed_frames(weights, over, total)
        )

    def frame_encoder(self, weights: Path):
        """``(B, 1, 128, 512) -> (B, D)``: SoundCLIP, for :meth:`frame_targets`."""
        from soundguide.encoders.soundclip import load_soundclip

        device = self.context.device
        model = load_soundclip(weights, trust=self.context.trust_checkpoint).to(device)
        param = next(model.parameters())
        return lambda x: model(x.to(param.device, param.dtype))

    def _embed_frames(self, weights: Path, over: OverTime, frames: int) -> torch.Tensor:
        from soundguide.encoders.audio import AudioFile
        from soundguide.encoders.soundclip import SAMPLE_RATE, SoundCLIPFrontend
        from soundguide.video import targets as tt

        encode = self.frame_encoder(weights)
        frontend = SoundCLIPFrontend().to(self.context.device)
        with AudioFile(self.paths[0], SAMPLE_RATE) as source:
            power, peaks = tt.recording_power(source, frontend)
        spans = tt.window_spans(frames, over.rate, over.window, power.shape[-1])
        embeddings = tt.frame_embeddings(power, peaks, spans, encode, batch=over.batch)
        return tt.smooth(embeddings, over.rate, over.smoothing, over.tau)

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
