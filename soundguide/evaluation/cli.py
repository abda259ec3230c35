"""``soundguide zeroshot`` and ``soundguide probe``: the click commands.

The plugin module :mod:`soundguide.evaluation.plugin` registers them by name
and short help; this module is imported only when one of them runs (or shows
its own ``--help``).

Both take a dataset name and the dataset's root folder as downloaded, embed
every clip with the audio encoder of a guidance plugin (``--guidance audio``,
SoundCLIP, by default; ``--encoder`` is a known-weights name or a checkpoint
file), cache the embeddings, and write their reports into ``--out``.
``--protocol`` names a set of settings (:data:`~soundguide.evaluation.zeroshot.PROTOCOLS`):
``soundguide`` (the default) or ``authors`` (the original authors' zero-shot
script); ``--crop``, ``--pad``, ``--db-reference``, ``--labels`` and
``--template`` given explicitly win over it.
Errors are :class:`~soundguide.core.errors.SoundguideError` and propagate to
the main entry point, which prints them as one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from soundguide.cli_options import plugin_option
from soundguide.evaluation.embedders import EVAL_CROPS, EVAL_DB_REFERENCES, EVAL_PADS
from soundguide.evaluation.plugin import PROBE_HELP, ZEROSHOT_HELP
from soundguide.evaluation.probe import DEFAULT_CS, DEFAULT_MAX_ITER
from soundguide.evaluation.zeroshot import DEFAULT_PROTOCOL, PROTOCOLS

if TYPE_CHECKING:
    import torch

    from soundguide.evaluation.embedders import AudioEmbedder
    from soundguide.evaluation.encoding import DatasetEmbeddings
    from soundguide.evaluation.zeroshot import EvalProtocol

DATASET_CHOICES = ("esc50", "urbansound8k", "us8k")
PROTOCOL_CHOICES = tuple(PROTOCOLS)


def _common_options(func):
    """Dataset, encoder and encoding options shared by both commands."""
    options = [
        click.argument(
            "dataset", type=click.Choice(DATASET_CHOICES, case_sensitive=False), metavar="DATASET"
        ),
        click.argument("root", type=click.Path(path_type=Path)),
        click.option(
            "--out",
            type=click.Path(path_type=Path),
            required=True,
            help="Folder for the reports (created; existing reports need --overwrite).",
        ),
        click.option(
            "--encoder",
            default="soundclip-resnet18-57",
            show_default=True,
            help="Audio encoder weights: a known-weights name or a checkpoint file.",
        ),
        click.option(
            "--guidance",
            default="audio",
            show_default=True,
            help="Guidance plugin whose audio encoder is evaluated (it must offer audio_embedder).",
        ),
        click.option(
            "--protocol",
            type=click.Choice(PROTOCOL_CHOICES),
            default=DEFAULT_PROTOCOL,
            show_default=True,
            help="Evaluation settings: soundguide (the encoder's training setup) or authors "
            "(the original authors' zero-shot script: centred crop and padding, raw labels, "
            "the bare label as prompt). Flags given explicitly win.",
        ),
        click.option(
            "--crop",
            type=click.Choice(EVAL_CROPS),
            default=None,
            help="Which 10 s of a longer clip: start, center, or windows (all windows averaged). "
            "[default: the protocol's: start | center]",
        ),
        click.option(
            "--pad",
            type=click.Choice(EVAL_PADS),
            default=None,
            help="Where a clip shorter than 10 s sits on the zero-padded canvas: end or center. "
            "[default: the protocol's: end | center]",
        ),
        click.option(
            "--db-reference",
            type=click.Choice(EVAL_DB_REFERENCES),
            default=None,
            help="Whose loudest bin is 0 dB for a clip longer than 10 s: the embedded window's "
            "or the whole clip's. [default: the protocol's: window | clip]",
        ),
        click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True),
        click.option(
            "--workers",
            type=click.IntRange(min=0),
            default=2,
            show_default=True,
            help="Threads reading audio ahead of the encoder (0: none).",
        ),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, ..."),
        click.option(
            "--cache-dir",
            type=click.Path(path_type=Path),
            help="Embedding cache (default: $SOUNDGUIDE_HOME/cache/embeddings).",
        ),
        click.option("--no-cache", is_flag=True, help="Neither read nor write cached embeddings."),
        click.option(
            "--skip-bad-audio",
            is_flag=True,
            help="Leave out clips that cannot be read (listed in the report) instead of stopping.",
        ),
        click.option(
            "--trust-checkpoint",
            is_flag=True,
            help="Allow checkpoints that unpickle arbitrary Python objects (only files you trust).",
        ),
        click.option("--overwrite", is_flag=True, help="Replace existing reports in --out."),
        click.option("--quiet", "-q", is_flag=True, help="No progress bar."),
        plugin_option,
        click.pass_context,
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _protocol(name: str, **explicit: object) -> EvalProtocol:
    """The named protocol with the flags given explicitly (not None) in place of its settings."""
    from soundguide.evaluation.zeroshot import get_protocol

    return get_protocol(name).with_settings(**explicit)


def _embedder(
    ctx: click.Context,
    encoder: str,
    guidance: str,
    protocol: EvalProtocol,
    device: torch.device,
    trust: bool,
    quiet: bool,
) -> AudioEmbedder:
    from soundguide.cli_options import _registries
    from soundguide.evaluation.embedders import embedder_from_guidance

    return embedder_from_guidance(
        _registries(ctx),
        guidance,
        encoder,
        crop=protocol.crop,
        pad=protocol.pad,
        db_reference=protocol.db_reference,
        device=device,
        trust=trust,
        progress=not quiet,
    )


@click.command("zeroshot", short_help=ZEROSHOT_HELP)
@_common_options
@click.option(
    "--clip-model",
    default="ViT-B/32",
    show_default=True,
    help="CLIP model for the class prompts: a name of the clip package or a local file.",
)
@click.option(
    "--template",
    "templates",
    multiple=True,
    metavar="TEXT",
    help="Prompt template with {label} (repeatable). [default: the protocol's: "
    '"the sound of {label}" and 3 more, as in training | "{label}"]',
)
@click.option(
    "--labels",
    type=click.Choice(("raw", "clean")),
    default=None,
    help="Class names in the prompts as the dataset spells them (raw: crackling_fire) or "
    "cleaned (clean: crackling fire). [default: the protocol's: clean | raw]",
)
@click.option("--raw-labels", is_flag=True, hidden=True, help="The same as --labels raw.")
def zeroshot(
    ctx: click.Context,
    dataset: str,
    root: Path,
    out: Path,
    encoder: str,
    guidance: str,
    protocol: str,
    crop: str | None,
    pad: str | None,
    db_reference: str | None,
    batch_size: int,
    workers: int,
    device: str,
    cache_dir: Path | None,
    no_cache: bool,
    skip_bad_audio: bool,
    trust_checkpoint: bool,
    overwrite: bool,
    quiet: bool,
    clip_model: str,
    templates: tuple[str, ...],
    labels: str | None,
    raw_labels: bool,
) -> None:
    """Zero-shot classification of DATASET (esc50, urbansound8k) found at ROOT.

    Writes zeroshot.json, zeroshot.md, zeroshot_confusion.png and
    zeroshot_predictions.csv into --out.
    """
    from soundguide.core.engine import resolve_device
    from soundguide.core.errors import ConfigError
    from soundguide.encoders.clip import CLIPEncoder, clip_file, load_clip
    from soundguide.evaluation.datasets import load_dataset
    from soundguide.evaluation.embedders import describe_clip_file
    from soundguide.evaluation.reports import ZEROSHOT_FILES, prepare_output, write_zeroshot_report
    from soundguide.evaluation.zeroshot import zero_shot

    if raw_labels and labels == "clean":
        raise ConfigError("--raw-labels and --labels clean contradict each other")
    settings = _protocol(
        protocol,
        crop=crop,
        pad=pad,
        db_reference=db_reference,
        labels="raw" if raw_labels else labels,
        templates=templates or None,
    )
    prepare_output(out, ZEROSHOT_FILES, overwrite)  # fail before any encoding
    data = load_dataset(dataset, root)
    torch_device = resolve_device(device)
    embedder = _embedder(ctx, encoder, guidance, settings, torch_device, trust_checkpoint, quiet)
    clip_path = clip_file(clip_model)
    model = load_clip(clip_path, device=torch_device, trust=trust_checkpoint)
    text = CLIPEncoder(model)
    result = zero_shot(
        data,
        embedder,
        text,
        protocol=settings,
        text_model=clip_model,
        text_weights=describe_clip_file(clip_model, clip_path, model),
        batch_size=batch_size,
        workers=workers,
        cache=not no_cache,
        cache_dir=cache_dir,
        skip_bad_audio=skip_bad_audio,
        progress=not quiet,
    )
    write_zeroshot_report(result, out, overwrite=overwrite)
    m, enc = result.metrics, result.encoding
    click.echo(
        f"{data.title} zero-shot, protocol {result.protocol.label()}: "
        f"top-1 {100 * m['top1']:.1f} %, top-{m['top_k']} "
        f"{100 * m['top5']:.1f} % over {m['clips']} clips (mean of folds "
        f"{100 * m['mean_fold_top1']:.1f} %); {_speed(enc)}; report in {out}"
    )


@click.command("probe", short_help=PROBE_HELP)
@_common_options
@click.option(
    "--c-grid",
    default=",".join(f"{c:g}" for c in DEFAULT_CS),
    show_default=True,
    metavar="C1,C2,...",
    help="Inverse regularization strengths to choose from (on the training folds only).",
)
@click.option(
    "--max-iter",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_ITER,
    show_default=True,
    help="lbfgs iteration limit per fit; fits that reach it are listed in the report.",
)
def probe(
    ctx: click.Context,
    dataset: str,
    root: Path,
    out: Path,
    encoder: str,
    guidance: str,
    protocol: str,
    crop: str | None,
    pad: str | None,
    db_reference: str | None,
    batch_size: int,
    workers: int,
    device: str,
    cache_dir: Path | None,
    no_cache: bool,
    skip_bad_audio: bool,
    trust_checkpoint: bool,
    overwrite: bool,
    quiet: bool,
    c_grid: str,
    max_iter: int,
) -> None:
    """Linear probe (logistic regression, leave-one-official-fold-out) on DATASET at ROOT.

    Writes probe.json, probe.md and probe_predictions.csv into --out.
    """
    import warnings

    from soundguide.core.engine import resolve_device
    from soundguide.evaluation.datasets import load_dataset
    from soundguide.evaluation.probe import ProbeWarning, _sklearn, probe_dataset
    from soundguide.evaluation.reports import PROBE_FILES, prepare_output, write_probe_report

    cs = _parse_grid(c_grid)
    settings = _protocol(protocol, crop=crop, pad=pad, db_reference=db_reference)
    _sklearn()  # fail before any encoding when scikit-learn is missing
    prepare_output(out, PROBE_FILES, overwrite)
    data = load_dataset(dataset, root)
    torch_device = resolve_device(device)
    embedder = _embedder(ctx, encoder, guidance, settings, torch_device, trust_checkpoint, quiet)
    with warnings.catch_warnings():  # echoed below, after the result line
        warnings.simplefilter("ignore", ProbeWarning)
        report = probe_dataset(
            data,
            embedder,
            Cs=cs,
            max_iter=max_iter,
            batch_size=batch_size,
            workers=workers,
            cache=not no_cache,
            cache_dir=cache_dir,
            skip_bad_audio=skip_bad_audio,
            progress=not quiet,
        )
    write_probe_report(report, out, overwrite=overwrite, protocol=settings)
    r = report.result
    chosen = ", ".join(f"{f.C:g}" for f in r.folds)
    click.echo(
        f"{data.title} linear probe: {100 * r.mean_accuracy:.1f} % mean over "
        f"{len(r.folds)} folds (C per fold: {chosen}); {_speed(report.encoding)}; "
        f"report in {out}"
    )
    for caveat in r.warnings:
        click.echo(f"warning: {caveat}", err=True)


def _speed(encoding: DatasetEmbeddings) -> str:
    if encoding.from_cache:
        return "embeddings from the cache"
    return f"encoded {len(encoding.indices)} clips at {encoding.clips_per_second:.1f} clips/s"


def _parse_grid(text: str) -> tuple[float, ...]:
    from soundguide.core.errors import ConfigError

    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"--c-grid must be comma-separated numbers, got {text!r}") from None
    if not values or any(not (v > 0 and v != float("inf")) for v in values):
        raise ConfigError(f"--c-grid values must be positive and finite, got {text!r}")
    return values
