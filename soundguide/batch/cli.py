"""``soundguide batch CONFIG MANIFEST --out DIR``: one edit per manifest row.

The same command runs in one process or under ``torchrun --nproc_per_node N
-m soundguide.cli batch ...`` (each rank its share of the batches, on
``cuda:LOCAL_RANK`` or the CPU; see :mod:`soundguide.batch.runner`)::

    DIR/batch.json        which config, manifest and --set own the folder
    DIR/items/<id>/       a single edit's files; run.json last (= done)
    DIR/index.csv         one line per row: status, seconds, final losses, paths, error

Exit codes: 0 every row done; 1 a row's loss went non-finite (its outputs are
written); 2 bad input, or a row failed (each in the index with its error);
130 / 143 stopped by Ctrl-C / SIGTERM (done items kept; run again to go on).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import click

from soundguide.batch.plugin import BATCH_HELP
from soundguide.cli_options import plugin_option, trust_checkpoint_option

CUDA_BATCH = 8
"""``--batch-size auto`` on a GPU (1 on a CPU, where batching loses; see the README)."""


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def threads_for(value: str, environ: dict[str, str] | None = None) -> int | None:
    """``--threads``: a number, or ``auto`` (None: torch's default in one process;
    under torchrun, the cores divided among the processes of this node)."""
    from soundguide.core.errors import ConfigError

    environ = os.environ if environ is None else environ
    if value != "auto":
        if not value.isdigit() or int(value) < 1:
            raise ConfigError(f"--threads: expected auto or a positive number, got {value!r}")
        return int(value)
    local = environ.get("LOCAL_WORLD_SIZE")
    if local is None or not local.isdigit():
        return None
    return max(1, _cores() // max(1, int(local)))


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Set torch's intra-op threads for the block; restore them after (the command owns
    its process, but leaves it as it found it)."""
    import torch

    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def batch_size_for(value: str, device_type: str) -> int:
    from soundguide.core.errors import ConfigError

    if value == "auto":
        return CUDA_BATCH if device_type == "cuda" else 1
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"--batch-size: expected auto or a positive number, got {value!r}")
    return int(value)


def identity_of(config: Path, manifest: Path, overrides: list[str]) -> str:
    """What makes two runs the same batch: the config, the manifest and --set."""
    digest = hashlib.sha256()
    for path in (config, manifest):
        digest.update(path.read_bytes())
        digest.update(b"\0")
    digest.update(json.dumps(overrides).encode())
    return digest.hexdigest()


@click.command("batch", short_help=BATCH_HELP)
@click.argument("config", type=click.Path(path_type=Path))
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output folder.")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="SECTION.KEY=VALUE",
    help="Override a config value for every row (repeatable).",
)
@click.option(
    "--batch-size",
    default="auto",
    show_default=True,
    help=f"Rows optimized together: a number, or auto (1 on a CPU, {CUDA_BATCH} on a GPU).",
)
@click.option(
    "--threads",
    default="auto",
    show_default=True,
    help="Torch threads per process: a number, or auto (torch's default; under torchrun "
    "the cores divided among this node's processes).",
)
@click.option(
    "--device",
    default="auto",
    show_default=True,
    help="auto (cuda:LOCAL_RANK, else the CPU), cpu, cuda or cuda:N.",
)
@click.option("--fail-fast", is_flag=True, help="Stop at the first row that fails (exit 2).")
@click.option(
    "--overwrite",
    is_flag=True,
    help="Use an --out that holds another batch (or other files): its items are redone "
    "with this batch's settings.",
)
@trust_checkpoint_option
@click.option("--quiet", "-q", is_flag=True, help="Only failures and the summary.")
@plugin_option
@click.pass_context
def batch(
    ctx: click.Context,
    config: Path,
    manifest: Path,
    out: Path,
    overrides: tuple[str, ...],
    batch_size: str,
    threads: str,
    device: str,
    fail_fast: bool,
    overwrite: bool,
    trust_checkpoint: bool,
    quiet: bool,
) -> None:
    """Edit once per row of MANIFEST (CSV or JSONL) with the settings of CONFIG.

    Each row's edit goes to OUT/items/<id>/ (the files of a single edit) and
    OUT/index.csv lists every row. Run it again with the same arguments to
    go on after a stop: done items are skipped, unfinished ones redone.
    Under torchrun each process runs its share of the rows.
    """
    from soundguide.batch.manifest import load_items
    from soundguide.batch.runner import (
        BatchRunner,
        Options,
        batch_record,
        check_folder,
        finish_index,
    )
    from soundguide.cli import EXIT_BAD_INPUT, EXIT_RUN_FAILED, stop_on_signals
    from soundguide.cli_options import _registries
    from soundguide.core.engine import Stop
    from soundguide.core.errors import ConfigError, OutputError, SoundguideError, exception_line
    from soundguide.training.distributed import (
        broadcast_object,
        gather_objects,
        init_distributed,
        shutdown,
    )

    registries = _registries(ctx)
    overrides_list = list(overrides)
    items = load_items(config, manifest, registries, overrides_list)
    identity = identity_of(config, manifest, overrides_list)
    out = out.expanduser()
    count = threads_for(threads)
    stop = Stop()
    echo = click.echo
    with stop_on_signals(stop) as received, torch_threads(count):
        job = init_distributed(device)
        lock = None
        try:
            size = batch_size_for(batch_size, job.device.type)
            limit = min(item.config.optimization.max_batch for item in items)
            if size > limit:
                raise ConfigError(
                    f"--batch-size {size} is more than optimization.max_batch = {limit}",
                    hint="raise optimization.max_batch if your device has the memory",
                )
            problem = None
            if job.is_main:
                record = batch_record(config, manifest, overrides_list, identity, len(items))
                try:
                    lock = check_folder(out, identity, record, overwrite)
                except OutputError as exc:
                    problem = (exc.message, exc.hint)
            problem = broadcast_object(problem, job)
            if problem is not None:
                raise OutputError(problem[0], hint=problem[1])
            if job.is_main and not quiet:
                echo(
                    f"{len(items)} rows, batches of {size}, {job.world_size} "
                    f"process{'es' if job.world_size > 1 else ''}, device {job.device}"
                )
            options = Options(out, size, trust_checkpoint, fail_fast, overwrite, quiet)
            runner = BatchRunner(
                items,
                registries,
                options,
                identity=identity,
                job=job,
                stop=stop,
                signals=received,
                echo=echo,
            )
            summary = runner.run()
            stop.phase = "finishing"
            try:
                outcomes = gather_objects(summary.outcomes, job)
            except RuntimeError as exc:  # gloo/nccl: a peer died (killed, out of memory)
                raise SoundguideError(
                    f"another process of this run ended before the end ({exception_line(exc)})",
                    hint="the done items are kept: run the same command again to go on",
                ) from None
            if job.is_main:
                path, counts = finish_index(out, items, identity, outcomes)
                said = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
                echo(f"{said}; index: {path}")
                statuses = set(counts)
            else:
                statuses = {o.status for o in summary.outcomes.values()}
        finally:
            if lock is not None:
                lock.release()
            shutdown(job)
    if received:
        ctx.exit(128 + received[0])
    if "failed" in statuses or stop.requested:
        if "failed" in statuses:
            click.echo("error: some rows failed; see the index for their errors", err=True)
        ctx.exit(EXIT_BAD_INPUT)
    if "nonfinite" in statuses:
        click.echo("error: some rows' losses became non-finite; see the index", err=True)
        ctx.exit(EXIT_RUN_FAILED)
