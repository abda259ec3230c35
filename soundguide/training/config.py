"""Settings of a training run: a strict pydantic model, from flags, a TOML file or a run folder.

:class:`TrainConfig` holds every setting; a bad value is one
:class:`~soundguide.core.errors.ConfigError` line naming where it came from and
its key, formatted as run configs' errors are (``train.toml: epochs: input
should be greater than or equal to 1``, ``--template: ...``). Checkpoints store
it as a plain dict (:meth:`TrainConfig.to_dict`).

:func:`resolve_train_config` merges the sources of ``soundguide train``, later
ones winning: the defaults, the paper's settings (``--paper``, or ``paper =
true`` in the file), the stored run (``--resume``), the ``--config`` TOML file,
then the flags given on the command line (with two exceptions, see
:func:`resolve_train_config`). A TOML file holds the same keys as
the run's ``config.json``, at its top level::

    store = "runs/store"          # relative paths: against the file's folder
    out = "runs/soundclip"
    epochs = 30
    templates = ["the sound of {label}", "{label}"]
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, ValidationError

from soundguide.core.config import config_error, read_toml, validation_problem
from soundguide.core.errors import ConfigError
from soundguide.core.interfaces import StrictModel
from soundguide.evaluation.prompts import DEFAULT_TEMPLATES, template_problem
from soundguide.training.loss import CLIP_INIT, PAPER_LOGIT_SCALE

PAPER_SETTINGS: dict[str, Any] = {
    "optimizer": "sgd",
    "lr": 0.1,
    "min_lr": 0.001,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "decay_all": True,
    "schedule": "cyclic",
    "cycle_epochs": 5,
    "warmup_steps": 0,
    "batch_size": 320,
    "epochs": 50,
    "learnable_scale": False,
    "logit_scale": PAPER_LOGIT_SCALE,
    "image_weight": 0.0,
    "best": "val_loss",
    "paper": True,
}
"""The original code's training (``soundclip/train.py``): SGD (momentum 0.9, weight
decay 5e-4 on every parameter), ``CyclicLR(base_lr=0.001, max_lr=0.1,
step_size_up=5, mode="triangular")`` stepped once per *epoch* (torch's default
momentum cycling, 0.9 down to 0.8 as the rate rises), batch 320, 50 epochs,
logits scaled by the fixed ``exp(0.07)``, loss ``(audio-text + text-audio +
audio-aug + aug-audio) / 4`` (no image term: the paper describes one, the code
left it out), the best checkpoint by validation loss."""

RESUMABLE_OVERRIDES = frozenset(
    {
        "store",
        "out",
        "epochs",
        "max_steps",
        "loader_workers",
        "device",
        "log_every",
        "checkpoint_every",
    }
)
"""Settings that may differ when a run is resumed; every other one must match. (A
moved run or store is fine; the store's content is checked by its fingerprint.
More ``epochs`` or a larger ``max_steps`` extend a run.)"""

BEST_METRICS = {"val_loss": "min", "val_top1": "max", "train_loss": "min"}
"""The metrics an epoch's best can be chosen by, and which way is better.
``train_loss`` is the fallback of a run without held-out clips."""

PATH_KEYS = ("store", "out", "init")
"""Settings that are paths: relative ones resolve against the TOML file's folder."""

_HINT = "`soundguide train --help` lists the settings; a run's config.json shows every key"


def _absolute(value: str) -> str:
    return str(Path(value).expanduser().resolve())


def _template(value: str) -> str:
    problem = template_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


_ERROR_SOURCE: ContextVar[tuple[str, dict[str, str]]] = ContextVar(
    "train_config_source", default=("training settings", {})
)
"""Where the values being validated came from, for the error message."""

AbsolutePath = Annotated[str, AfterValidator(_absolute)]
Template = Annotated[str, AfterValidator(_template)]


class TrainConfig(StrictModel):
    """Everything that defines a training run. Defaults: AdamW, cosine, learnable temperature.

    Built from keywords (``TrainConfig(store=..., out=..., epochs=3)``), a
    dict (:meth:`from_dict`) or the command line (:func:`resolve_train_config`);
    every way raises one located :class:`ConfigError` line for bad values.
    """

    store: AbsolutePath = Field(description="Folder written by `soundguide curate`.")
    out: AbsolutePath = Field(description="Run folder: checkpoints, exported encoders, logs.")
    clip: str = Field(
        "ViT-B/32",
        description="CLIP model (name or file) whose frozen text tower gives the targets.",
    )
    arch: str = Field(
        "resnet18", description="Audio encoder: resnet18 (SoundCLIP) or tiny (tests, smoke runs)."
    )
    init: str | None = Field(
        None, description="Initial encoder weights (e.g. resnet18_57.pth), or None for random."
    )
    templates: list[Template] = Field(
        default_factory=lambda: list(DEFAULT_TEMPLATES),
        min_length=1,
        description="Prompt templates with {label} (see soundguide.evaluation.prompts).",
    )
    epochs: int = Field(50, ge=1)
    batch_size: int = Field(
        320, ge=1, description="The global batch: all ranks and accumulation steps together."
    )
    accumulate: int = Field(
        1, ge=1, description="Micro-batches per optimizer step (negatives span the global batch)."
    )
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(1e-3, ge=0, description="Peak learning rate (CyclicLR's max_lr).")
    min_lr: float = Field(
        0.0, ge=0, description="Floor of the cosine schedule; CyclicLR's base_lr."
    )
    weight_decay: float = Field(0.01, ge=0)
    momentum: float = Field(
        0.9, ge=0, description="SGD momentum (and CyclicLR's max momentum); unused by AdamW."
    )
    decay_all: bool = Field(
        False,
        description="Weight decay on biases and norm weights too (the original SGD); "
        "else matrices only.",
    )
    schedule: Literal["cosine", "cyclic", "constant"] = "cosine"
    warmup_steps: int = Field(
        100, ge=0, description="Linear warm-up steps of the cosine and constant schedules."
    )
    cycle_steps: int = Field(
        2000,
        ge=1,
        description="CyclicLR's step_size_up in optimizer steps (base to max), the schedule "
        "stepped after every optimizer step; unused when cycle_epochs is set.",
    )
    cycle_epochs: int | None = Field(
        None,
        ge=1,
        description="CyclicLR's step_size_up in epochs, the schedule stepped once per epoch "
        "(the original code: 5); None: cycle_steps. A source that sets cycle_steps alone "
        "clears it.",
    )
    learnable_scale: bool = True
    logit_scale: float = Field(
        CLIP_INIT,
        description="log of the logit scale: CLIP's log(1/0.07) learnable, or the paper's "
        "fixed 0.07.",
    )
    text_weight: float = Field(1.0, ge=0)
    augment_weight: float = Field(1.0, ge=0)
    image_weight: float = Field(1.0, ge=0)
    freq_mask: int = Field(24, ge=0)
    time_mask: int = Field(96, ge=0)
    num_masks: int = Field(2, ge=0)
    val_fraction: float = Field(
        0.1, ge=0, lt=1, description="Held out per label when the store has no test/val split."
    )
    seed: int = 0
    precision: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        "auto", description="auto: fp16 autocast (with a GradScaler) on CUDA, fp32 elsewhere."
    )
    device: str = "auto"
    loader_workers: int = Field(2, ge=0)
    log_every: int = Field(10, ge=1)
    checkpoint_every: int = Field(
        0, ge=0, description="Also write the resume checkpoint every N steps (0: epoch ends only)."
    )
    max_steps: int | None = Field(
        None, ge=1, description="Stop (with a checkpoint) after this many optimizer steps in all."
    )
    sync_bn: bool = Field(
        False,
        description="SyncBatchNorm across ranks (CUDA only); else batch norm sees each "
        "rank's chunk.",
    )
    best: Literal["val_loss", "val_top1"] = Field(
        "val_loss",
        description="Which epoch encoder-best.pth keeps: the lowest validation loss or the "
        "highest zero-shot top-1 on the held-out clips; a later epoch must be strictly "
        "better (ties keep the earlier). Without that metric: the other, then train_loss.",
    )
    paper: bool = False

    def __init__(self, **values: Any) -> None:
        # pydantic validates through a custom __init__, from_dict included
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise _located(exc, *_ERROR_SOURCE.get()) from None

    @classmethod
    def from_dict(
        cls,
        values: Mapping[str, Any],
        *,
        source: str = "training settings",
        flags: Mapping[str, str] | None = None,
    ) -> TrainConfig:
        """Validate ``values``; errors name ``source``, or the flag of a key in ``flags``."""
        if not isinstance(values, Mapping):
            raise ConfigError(
                f"{source}: expected a table of settings, got {type(values).__name__}"
            )
        token = _ERROR_SOURCE.set((source, dict(flags or {})))
        try:
            return cls(**values)
        finally:
            _ERROR_SOURCE.reset(token)

    @classmethod
    def paper_preset(cls, store: str, out: str, **overrides: Any) -> TrainConfig:
        """The original code's settings (:data:`PAPER_SETTINGS`), then ``overrides``."""
        return cls(store=store, out=out, **{**PAPER_SETTINGS, **overrides})

    def to_dict(self) -> dict[str, Any]:
        """Plain containers (str, numbers, lists, None): what checkpoints and config.json hold."""
        return self.model_dump()

    def differences(self, other: TrainConfig) -> list[str]:
        """Names of the settings (outside :data:`RESUMABLE_OVERRIDES`) that differ."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [k for k in mine if k not in RESUMABLE_OVERRIDES and mine[k] != theirs[k]]


def _located(
    exc: ValidationError, source: str, flags: Mapping[str, str] | None = None
) -> ConfigError:
    flags = flags or {}
    allowed = list(TrainConfig.model_fields)
    problems = [validation_problem(e, e["loc"], allowed) for e in exc.errors()]
    return config_error(
        source,
        problems,
        overridden=[[key] for key in flags],
        override_name=lambda loc: flags.get(loc[0], source) if loc else source,
        hint=_HINT,
    )


def read_train_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The settings in a TOML file, with relative paths resolved against its folder."""
    path = Path(path).expanduser()
    data = read_toml(path)
    base = path.resolve().parent
    for key in PATH_KEYS:
        value = data.get(key)
        if isinstance(value, str) and not Path(value).expanduser().is_absolute():
            data[key] = str(base / value)
    clip = data.get("clip")
    if isinstance(clip, str) and (base / clip).is_file():
        data["clip"] = str(base / clip)  # a CLIP file next to the config, not a model name
    return data


def resolve_train_config(
    *,
    flags: Mapping[str, Any] | None = None,
    file: str | os.PathLike[str] | None = None,
    stored: TrainConfig | None = None,
    flag_names: Mapping[str, str] | None = None,
) -> TrainConfig:
    """Merge the sources of a run, later ones winning, and validate the result.

    Order: the defaults, then :data:`PAPER_SETTINGS` when ``paper`` is set in
    the file or the flags, then ``stored`` (a resumed run's own settings,
    which replace both), then the TOML ``file``, then ``flags`` (the options
    given on the command line). ``flag_names`` maps a setting to the option
    that set it (``{"epochs": "--epochs"}``), for error messages.

    Two settings are alternatives, not independent keys: a source that sets
    ``cycle_steps`` without ``cycle_epochs`` clears an earlier
    ``cycle_epochs`` (``--paper --cycle-steps 2`` cycles in steps). A resumed
    run keeps its own ``max_steps`` unless one is given, or unless ``epochs``
    changes without one (more epochs mean: train on).
    """
    flags = dict(flags or {})
    from_file = read_train_toml(file) if file is not None else {}
    values: dict[str, Any] = {}
    if stored is not None:
        values.update(stored.to_dict())
    elif flags.get("paper") or from_file.get("paper") is True:
        values.update(PAPER_SETTINGS)
    for source in (from_file, flags):
        if "cycle_steps" in source and "cycle_epochs" not in source:
            values["cycle_epochs"] = None  # a cycle in steps replaces an earlier one in epochs
        values.update(source)
    given = {**from_file, **flags}
    if (
        stored is not None
        and "max_steps" not in given
        and given.get("epochs", stored.epochs) != stored.epochs
    ):
        values["max_steps"] = None  # a new length replaces the run's step limit
    names = {key: (flag_names or {}).get(key, f"--{key.replace('_', '-')}") for key in flags}
    source = str(file) if file is not None else "training settings"
    for key in ("store", "out"):
        if key not in values:
            raise ConfigError(
                f"training needs {key!r}: give {key.upper()} on the command line"
                + (f" or set {key} in {file}" if file is not None else ""),
                hint="soundguide train STORE OUT, or soundguide train --config train.toml",
            )
    return TrainConfig.from_dict(values, source=source, flags=names)
