"""Settings of a training run, as a plain dataclass (stored in checkpoints as a dict)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from soundguide.core.errors import ConfigError
from soundguide.training.loss import CLIP_INIT, PAPER_LOGIT_SCALE
from soundguide.training.text import DEFAULT_TEMPLATES, check_templates

PAPER_SETTINGS: dict[str, Any] = {
    "optimizer": "sgd",
    "lr": 0.1,
    "min_lr": 0.001,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "decay_all": True,
    "schedule": "cyclic",
    "warmup_steps": 0,
    "batch_size": 320,
    "epochs": 50,
    "learnable_scale": False,
    "logit_scale": PAPER_LOGIT_SCALE,
    "image_weight": 0.0,
    "paper": True,
}
"""The original code's training: SGD (momentum 0.9, weight decay 5e-4 on every
parameter), CyclicLR 0.001-0.1, batch 320, 50 epochs, logits scaled by the fixed
``exp(0.07)``, loss ``(audio-text + text-audio + audio-aug + aug-audio) / 4``
(no image term: the paper describes one, the code left it out)."""

RESUMABLE_OVERRIDES = frozenset(
    {"store", "out", "max_steps", "loader_workers", "device", "log_every", "checkpoint_every"}
)
"""Settings that may differ when a run is resumed; every other one must match. (A
moved run or store is fine; the store's content is checked by its fingerprint.)"""


@dataclass
class TrainConfig:
    """Everything that defines a training run. Defaults: AdamW, cosine, learnable temperature."""

    store: str
    """Folder written by ``soundguide curate``."""
    out: str
    """Run folder: checkpoints, exported encoders, logs."""
    clip: str = "ViT-B/32"
    """CLIP model (name or file) whose frozen text tower gives the targets."""
    arch: str = "resnet18"
    """Audio encoder: ``resnet18`` (SoundCLIP) or ``tiny`` (tests, smoke runs)."""
    init: str | None = None
    """Initial encoder weights (e.g. resnet18_57.pth), or None for random."""
    templates: list[str] = field(default_factory=lambda: list(DEFAULT_TEMPLATES))
    epochs: int = 50
    batch_size: int = 320
    """The global batch: all ranks and accumulation steps together."""
    accumulate: int = 1
    """Micro-batches per optimizer step (negatives still span the global batch)."""
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = 1e-3
    """Peak learning rate (CyclicLR's max_lr)."""
    min_lr: float = 0.0
    """Floor of the cosine schedule; CyclicLR's base_lr."""
    weight_decay: float = 0.01
    momentum: float = 0.9
    """SGD momentum (and CyclicLR's max momentum); unused by AdamW."""
    decay_all: bool = False
    """Weight decay on biases and norm weights too (the original SGD); else matrices only."""
    schedule: Literal["cosine", "cyclic", "constant"] = "cosine"
    warmup_steps: int = 100
    """Linear warm-up steps of the cosine and constant schedules."""
    cycle_steps: int = 2000
    """CyclicLR's step_size_up (optimizer steps from base to max)."""
    learnable_scale: bool = True
    logit_scale: float = CLIP_INIT
    """log of the logit scale: CLIP's log(1/0.07) learnable, or the paper's fixed 0.07."""
    text_weight: float = 1.0
    augment_weight: float = 1.0
    image_weight: float = 1.0
    freq_mask: int = 24
    time_mask: int = 96
    num_masks: int = 2
    val_fraction: float = 0.1
    """Held out per label when the store has no test/val split."""
    seed: int = 0
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    """auto: fp16 autocast (with a GradScaler) on CUDA, fp32 elsewhere."""
    device: str = "auto"
    loader_workers: int = 2
    log_every: int = 10
    checkpoint_every: int = 0
    """Also write the resume checkpoint every N steps (0: at epoch ends only)."""
    max_steps: int | None = None
    """Stop (with a checkpoint) after this many optimizer steps in all."""
    sync_bn: bool = False
    """SyncBatchNorm across ranks (CUDA only); else batch norm sees each rank's chunk."""
    paper: bool = False

    def __post_init__(self) -> None:
        self.store = str(Path(self.store).expanduser().resolve())
        self.out = str(Path(self.out).expanduser().resolve())
        self.templates = check_templates(self.templates)
        positive = ("epochs", "batch_size", "accumulate", "log_every")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "min_lr", "weight_decay", "momentum", "warmup_steps", "loader_workers"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.cycle_steps < 1:
            raise ConfigError(f"cycle_steps must be >= 1, got {self.cycle_steps}")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps must be >= 1, got {self.max_steps}")
        choices = {
            "optimizer": ("adamw", "sgd"),
            "schedule": ("cosine", "cyclic", "constant"),
            "precision": ("auto", "fp32", "fp16", "bf16"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"unknown {name} {getattr(self, name)!r}; available: {', '.join(allowed)}"
                )

    @classmethod
    def paper_preset(cls, store: str, out: str, **overrides: Any) -> TrainConfig:
        """The original code's settings (:data:`PAPER_SETTINGS`), then ``overrides``."""
        return cls(store=store, out=out, **{**PAPER_SETTINGS, **overrides})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown training settings: {', '.join(unknown)}")
        return cls(**values)

    def differences(self, other: TrainConfig) -> list[str]:
        """Names of the settings (outside :data:`RESUMABLE_OVERRIDES`) that differ."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [k for k in mine if k not in RESUMABLE_OVERRIDES and mine[k] != theirs[k]]
