"""``soundguide curate`` and ``soundguide train``: the click commands.

The plugin module :mod:`soundguide.training.plugin` registers them by name and
short help; this module is imported only when one of them runs (or shows its
own ``--help``). Errors of soundguide's own types propagate to the main CLI,
which prints one line and exits with the error's code. Under ``torchrun``::

    torchrun --nproc_per_node 8 -m soundguide.cli train STORE OUT
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from soundguide.cli_options import _registries, plugin_option
from soundguide.training.config import TrainConfig
from soundguide.training.curation import DEFAULT_MAX_SECONDS, DEFAULT_SHARD_SIZE
from soundguide.training.datasets import DEFAULT_PATTERN, LAYOUTS
from soundguide.training.models import ARCHITECTURES
from soundguide.training.plugin import CURATE_HELP, TRAIN_HELP

_DEFAULTS = {
    name: info.default
    for name, info in TrainConfig.model_fields.items()
    if not info.is_required() and info.default_factory is None
}


def _load_plugins(ctx: click.Context) -> None:
    """Register the -p modules given (so a broken one is reported like in every command)."""
    if ctx.find_root().ensure_object(dict).get("plugins"):
        _registries(ctx)


@click.command("curate", short_help=CURATE_HELP)
@click.argument("dataset", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option(
    "--layout",
    type=click.Choice(LAYOUTS),
    default="auto",
    show_default=True,
    help="Dataset layout: a folder per class, a VGGSound CSV, or a CSV/JSONL manifest.",
)
@click.option(
    "--pattern",
    default=DEFAULT_PATTERN,
    show_default=True,
    help="VGGSound: audio file name from {ytid}, {start}, {end}, {label}, {split}.",
)
@click.option(
    "--audio-dir",
    type=click.Path(path_type=Path),
    help="VGGSound: folder of the audio files (default: the CSV's folder).",
)
@click.option(
    "--workers",
    "-j",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Worker processes computing shards.",
)
@click.option(
    "--shard-size",
    type=click.IntRange(min=1),
    default=DEFAULT_SHARD_SIZE,
    show_default=True,
    help="Clips per shard on average, at most 1.39x (the unit of work and of resuming).",
)
@click.option(
    "--max-seconds",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_MAX_SECONDS,
    show_default=True,
    help="Keep at most this many seconds of each clip (from its start).",
)
@click.option(
    "--clip",
    default="ViT-B/32",
    show_default=True,
    help="CLIP model (name or file) embedding video frames; loaded only when the dataset has frames.",
)
@click.option("--no-images", is_flag=True, help="Ignore video frames in the manifest.")
@click.option("--device", default="auto", show_default=True, help="Device for embedding frames.")
@click.option(
    "--trust-checkpoint", is_flag=True, help="Allow a CLIP file that unpickles arbitrary objects."
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@plugin_option
@click.pass_context
def curate(
    ctx: click.Context,
    dataset: Path,
    out: Path,
    layout: str,
    pattern: str,
    audio_dir: Path | None,
    workers: int,
    shard_size: int,
    max_seconds: float,
    clip: str,
    no_images: bool,
    device: str,
    trust_checkpoint: bool,
    quiet: bool,
) -> None:
    """Precompute the SoundCLIP front end of DATASET into the store folder OUT.

    DATASET is a folder of class folders, a VGGSound CSV or a CSV/JSONL manifest.
    Unusable files are skipped and listed in OUT/skipped.tsv. Rerunning resumes:
    finished shards are kept.
    """
    from soundguide.training.curation import curate as run_curate
    from soundguide.training.distributed import resolve_device

    _load_plugins(ctx)
    report = run_curate(
        dataset,
        out,
        layout=layout,  # type: ignore[arg-type]
        pattern=pattern,
        audio_dir=audio_dir,
        workers=workers,
        shard_size=shard_size,
        max_seconds=max_seconds,
        clip=clip,
        images=not no_images,
        device=resolve_device(device),
        trust_checkpoint=trust_checkpoint,
        progress=not quiet,
    )
    click.echo(report.summary())


def _option(name: str, help: str, **kwargs: Any):
    field = name.lstrip("-").replace("-", "_")
    return click.option(
        name, field, default=_DEFAULTS.get(field), show_default=True, help=help, **kwargs
    )


@click.command("train", short_help=TRAIN_HELP)
@click.argument("store", type=click.Path(path_type=Path), required=False)
@click.argument("out", type=click.Path(path_type=Path), required=False)
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path),
    help="TOML file of training settings (the keys of a run's config.json; store and out "
    "may be set there). Options given on the command line win over it.",
)
@_option("--clip", "CLIP model (name or file) whose frozen text tower gives the targets.")
@_option(
    "--arch",
    "Audio encoder architecture (tiny: tests and smoke runs).",
    type=click.Choice(list(ARCHITECTURES)),
)
@click.option(
    "--init",
    type=click.Path(path_type=Path),
    help="Start from these encoder weights (e.g. resnet18_57.pth).",
)
@click.option(
    "--template",
    "templates",
    multiple=True,
    help='Prompt template with {label} (repeatable; default: "the sound of {label}" and 3 more, '
    "shared with zeroshot).",
)
@_option("--epochs", "Epochs.", type=click.IntRange(min=1))
@_option(
    "--batch-size",
    "Global batch (all processes and accumulation steps).",
    type=click.IntRange(min=1),
)
@_option(
    "--accumulate",
    "Micro-batches per optimizer step; negatives still span the global batch.",
    type=click.IntRange(min=1),
)
@_option("--optimizer", "Optimizer.", type=click.Choice(["adamw", "sgd"]))
@_option("--lr", "Peak learning rate (CyclicLR's max).", type=click.FloatRange(min=0))
@_option("--min-lr", "Cosine floor; CyclicLR's base learning rate.", type=click.FloatRange(min=0))
@_option("--weight-decay", "Weight decay.", type=click.FloatRange(min=0))
@_option("--momentum", "SGD momentum.", type=click.FloatRange(min=0))
@_option(
    "--schedule", "Learning-rate schedule.", type=click.Choice(["cosine", "cyclic", "constant"])
)
@_option("--warmup-steps", "Linear warm-up steps (cosine, constant).", type=click.IntRange(min=0))
@_option(
    "--cycle-steps",
    "CyclicLR: optimizer steps from base to max learning rate, stepped every step.",
    type=click.IntRange(min=1),
)
@_option(
    "--cycle-epochs",
    "CyclicLR: epochs from base to max, stepped once per epoch (--paper: 5); "
    "--cycle-steps alone turns it off.",
    type=click.IntRange(min=1),
)
@click.option(
    "--learnable-scale/--fixed-scale",
    "learnable_scale",
    default=_DEFAULTS["learnable_scale"],
    show_default=True,
    help="Learn the logit scale (CLIP) or keep it fixed (the paper).",
)
@click.option(
    "--logit-scale",
    "logit_scale",
    type=float,
    default=_DEFAULTS["logit_scale"],
    show_default="log(1/0.07)",
    help="Initial (or fixed) log of the logit scale (the paper: 0.07).",
)
@_option("--text-weight", "Weight of the audio-text term.", type=click.FloatRange(min=0))
@_option("--augment-weight", "Weight of the audio-SpecAugment term.", type=click.FloatRange(min=0))
@_option(
    "--image-weight",
    "Weight of the audio-video-frame term (when the store has frames).",
    type=click.FloatRange(min=0),
)
@_option(
    "--freq-mask", "SpecAugment: widest frequency mask (mel bands).", type=click.IntRange(min=0)
)
@_option(
    "--time-mask", "SpecAugment: widest time mask (frames of 864).", type=click.IntRange(min=0)
)
@_option("--num-masks", "SpecAugment: masks of each kind.", type=click.IntRange(min=0))
@_option(
    "--val-fraction",
    "Held out per label when the store has no test split.",
    type=click.FloatRange(0, 1, max_open=True),
)
@_option("--seed", "Seed of initialization, shuffling and augmentation.", type=int)
@_option(
    "--precision",
    "auto: fp16 autocast on CUDA, fp32 on the CPU.",
    type=click.Choice(["auto", "fp32", "fp16", "bf16"]),
)
@_option("--device", "auto, cpu, cuda or cuda:N (torchrun: each rank's LOCAL_RANK).")
@_option("--loader-workers", "DataLoader worker processes per rank.", type=click.IntRange(min=0))
@_option("--log-every", "Log every N steps.", type=click.IntRange(min=1))
@_option(
    "--best",
    "Which epoch encoder-best.pth keeps: lowest validation loss or highest zero-shot top-1 "
    "(ties: the earlier epoch).",
    type=click.Choice(["val_loss", "val_top1"]),
)
@_option(
    "--checkpoint-every",
    "Also checkpoint every N steps (0: epoch ends only).",
    type=click.IntRange(min=0),
)
@click.option(
    "--max-steps",
    type=click.IntRange(min=1),
    help="Stop (with a checkpoint) after N steps in all. --resume keeps the run's own unless "
    "this or --epochs is given.",
)
@click.option("--sync-bn", is_flag=True, help="SyncBatchNorm across processes (CUDA only).")
@click.option(
    "--paper",
    is_flag=True,
    help="The original code's settings: SGD 0.9, wd 5e-4, CyclicLR 0.001-0.1 over 5 epochs "
    "stepped once per epoch, batch 320, 50 epochs, fixed scale exp(0.07), no image term, best "
    "by validation loss (options given explicitly still win).",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the run in OUT (or start it when there is none); a larger --max-steps or "
    "more --epochs extend it.",
)
@click.option(
    "--trust-checkpoint",
    is_flag=True,
    help="Allow CLIP and --init files that unpickle arbitrary objects (only files you trust).",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@plugin_option
@click.pass_context
def train(
    ctx: click.Context,
    store: Path | None,
    out: Path | None,
    config_file: Path | None,
    resume: bool,
    trust_checkpoint: bool,
    quiet: bool,
    **options: Any,
) -> None:
    """Train the SoundCLIP audio encoder on the curated STORE; write the run to OUT.

    Audio-text InfoNCE against frozen CLIP text embeddings, audio-audio InfoNCE
    against a SpecAugment view, and audio-image InfoNCE when the store has video
    frames. OUT gets checkpoints/last.pt (resume), encoder-best.pth (the epoch
    of lowest validation loss, or see --best) and encoder-last.pth (plain
    state dicts for the audio guidance), log.jsonl, config.json and run.json.
    Under torchrun the same command trains on every process (DDP).

    Settings, later ones winning: the defaults, --paper, the run in OUT
    (--resume), the --config file, the options given here. STORE and OUT may
    come from the --config file instead.

    A resumed run with nothing left to do (its epochs done, or max_steps
    reached) changes nothing, says what to pass to go on, and exits with 0,
    so a requeued job may always pass --resume. run.json records the CLIP
    file's sha256 and says when it is not a released CLIP model (the demo's
    clip-tiny.pt: smoke tests and offline runs only).
    """
    from soundguide.training.config import read_train_toml, resolve_train_config
    from soundguide.training.resume import load_run_config
    from soundguide.training.trainer import train as run_train

    _load_plugins(ctx)
    source = click.core.ParameterSource
    flags = {
        name: value
        for name, value in options.items()
        if ctx.get_parameter_source(name) in (source.COMMANDLINE, source.ENVIRONMENT)
    }
    if "templates" in flags:
        flags["templates"] = list(flags["templates"])
    if flags.get("init") is not None:
        flags["init"] = str(flags["init"])
    for name, value in (("store", store), ("out", out)):
        if value is not None:
            flags[name] = str(value)
    stored = None
    if resume:
        run = flags.get("out")
        if run is None and config_file is not None:
            run = read_train_toml(config_file).get("out")
        stored = load_run_config(run) if isinstance(run, str) else None
    config = resolve_train_config(
        flags=flags,
        file=config_file,
        stored=stored,
        flag_names={"templates": "--template", "store": "STORE", "out": "OUT"},
    )
    result = run_train(config, resume=resume, trust_checkpoint=trust_checkpoint, progress=not quiet)
    if int(os.environ.get("RANK", "0")) == 0:
        if result.nothing_left is not None:
            click.echo(result.nothing_left)
            return
        for note in result.notes:
            click.echo(f"note: {note}")
        if result.clip is not None and result.clip["note"] is not None:
            click.echo(f"note: CLIP {result.clip['clip']}: {result.clip['note']}")
        best = ""
        if result.best:
            best = (
                f"; best {result.best['metric']} {result.best['value']:.4f} "
                f"at epoch {result.best['epoch'] + 1} ({result.best_encoder})"
            )
        state = "stopped" if result.stopped_early else "finished"
        click.echo(
            f"{state} after {result.global_step} steps ({result.epochs_done} epochs){best}; "
            f"last encoder {result.last_encoder}"
        )
