"""The ``soundguide`` command.

Its own subcommands (``edit``, ``demo``, ``plugins``, ``config``, ``weights``)
live here; every other one comes from a plugin's ``register_commands`` hook
(the built-ins ``curate``, ``train``, ``zeroshot`` and ``probe`` from
:mod:`soundguide.training.plugin` and :mod:`soundguide.evaluation.plugin`).
Plugins are loaded once per command line, when a command is looked up or
listed, with the ``-p`` modules read from the whole command line first (see
:mod:`soundguide.cli_options`). ``soundguide --help`` imports the plugin
modules only, not the code behind their commands.

Errors of soundguide's own types are caught once, here: one line ``error: ...``
plus a hint, exit code 2. A run stopped by a non-finite loss exits with 1
(its outputs are written). Ctrl-C (SIGINT) and SIGTERM stop a run between two
steps and write what exists, exit 130 / 143; a second signal does not abort
the writing (see :func:`stop_on_signals`).
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import click

from soundguide.cli_options import (
    LazyCommand,
    _registries,
    accept_plugin_option,
    device_option,
    malloc_option,
    plugin_option,
    scan_plugin_args,
    trust_checkpoint_option,
)
from soundguide.core.errors import SoundguideError

EXIT_BAD_INPUT = 2
EXIT_RUN_FAILED = 1
EXIT_INTERRUPTED = 130
_SIGNAL_NAMES = {signal.SIGINT: "Ctrl-C (SIGINT)", signal.SIGTERM: "SIGTERM"}


@contextlib.contextmanager
def stop_on_signals(stop) -> Iterator[list[int]]:
    """Make Ctrl-C (SIGINT) and SIGTERM stop a run cleanly, for as long as the block runs.

    While the run loads (``stop.phase == "preparing"``) the first signal aborts
    at once (KeyboardInterrupt: nothing exists yet). While it runs, the first
    signal asks it to stop after the step in progress. Later signals, and any
    signal once the loop has ended, only say that the outputs are being
    written: a second Ctrl-C or a scheduler's SIGTERM never loses them. Yields
    the list of signals received; restores the previous handlers on exit. For
    a command that owns its process (the CLI), not for library code.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handle(signum: int, _frame: Any) -> None:
        first = not received
        received.append(signum)
        name = _SIGNAL_NAMES.get(signum, f"signal {signum}")
        if first and stop.phase == "preparing":
            raise KeyboardInterrupt
        if stop.phase == "running" and not stop.requested:
            stop.request(f"stopped by {name}")
            click.echo(
                f"\n{name}: stopping after the current step and writing the outputs",
                err=True,
            )
        elif len(received) == 2 or first:
            click.echo(f"\n{name}: already stopping; writing the outputs", err=True)

    previous = {sig: signal.signal(sig, handle) for sig in _SIGNAL_NAMES}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _exit_code(status: str, received: list[int]) -> int:
    if received:
        return 128 + received[0]
    return {"finished": 0, "nonfinite": EXIT_RUN_FAILED, "interrupted": EXIT_INTERRUPTED}.get(
        status, EXIT_RUN_FAILED
    )


def set_option(func):
    func = click.option(
        "--preset",
        type=click.Choice(["paper"]),
        default=None,
        help="Run preset: 'paper' reproduces the original code's settings (see the README).",
    )(func)
    return click.option(
        "--set",
        "overrides",
        multiple=True,
        metavar="SECTION.KEY=VALUE",
        help="Override a config value (repeatable), e.g. --set optimization.steps=100.",
    )(func)


def _overrides(overrides: tuple[str, ...], preset: str | None) -> list[str]:
    return ([f'optimization.preset="{preset}"'] if preset else []) + list(overrides)


class SoundguideGroup(click.Group):
    """The root group: its own commands, then those the plugins registered.

    Before parsing, the ``-p`` modules of the whole command line are noted, so
    the plugins are loaded with them when a plugin command is looked up or
    ``--help`` lists the commands.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if ctx.parent is None:
            plugins = ctx.ensure_object(dict).setdefault("plugins", [])
            plugins.extend(name for name in scan_plugin_args(args) if name not in plugins)
        return super().parse_args(ctx, args)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *_registries(ctx).commands.names()})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = self.commands.get(cmd_name)
        if command is None:
            command = _registries(ctx).commands.commands.get(cmd_name)
            if command is not None and not isinstance(command, LazyCommand):
                accept_plugin_option(command)  # -p may follow any command's name
        return command


@click.group(
    cls=SoundguideGroup,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(package_name="soundguide")
@plugin_option
def cli() -> None:
    """Edit and generate images guided by sound, text and pictures."""


@cli.command(short_help="Edit an image as a run config describes.")
@click.argument("config", type=click.Path(path_type=Path))
@set_option
@click.option(
    "--out", type=click.Path(path_type=Path), help="Output folder (default: [output] dir)."
)
@click.option("--overwrite", is_flag=True, help="Replace the outputs in a non-empty output folder.")
@device_option
@trust_checkpoint_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@malloc_option
@plugin_option
@click.pass_context
def edit(
    ctx: click.Context,
    config: Path,
    overrides: tuple[str, ...],
    preset: str | None,
    out: Path | None,
    overwrite: bool,
    device: str,
    trust_checkpoint: bool,
    quiet: bool,
    malloc: str,
) -> None:
    """Optimize a latent code as the CONFIG file describes and write the outputs."""
    from soundguide.api import edit as run_edit
    from soundguide.cli_malloc import malloc_policy
    from soundguide.core.config import load_config
    from soundguide.core.engine import Stop

    registries = _registries(ctx)
    run_config = load_config(config, registries, _overrides(overrides, preset))
    folder = out.expanduser() if out is not None else run_config.output.dir
    stop = Stop()
    with stop_on_signals(stop) as received, malloc_policy(malloc):
        try:
            result = run_edit(
                run_config,
                out=folder,
                overwrite=overwrite,
                device=device,
                registries=registries,
                trust_checkpoint=trust_checkpoint,
                progress=not quiet,
                stop=stop,
            )
        except KeyboardInterrupt:
            click.echo("interrupted before the first step; nothing was written", err=True)
            ctx.exit(_exit_code("interrupted", received))
    _report(ctx, result, folder, received)


def _report(ctx: click.Context, result: Any, folder: Path, received: list[int]) -> None:
    per_step = (
        f", {sum(result.step_seconds) / len(result.step_seconds):.3f} s/step"
        if result.step_seconds
        else ""
    )
    if result.status == "finished" and not received:
        click.echo(f"{result.message}{per_step}; outputs in {folder}")
        return
    click.echo(f"error: {result.message}; outputs in {folder}", err=True)
    ctx.exit(_exit_code(result.status, received))


@cli.command(short_help="Try the whole pipeline offline with tiny random models.")
@click.option(
    "--out", type=click.Path(path_type=Path), default=Path("runs/demo"), show_default=True
)
@click.option("--steps", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace the outputs in a non-empty folder.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@malloc_option
@plugin_option
@click.pass_context
def demo(
    ctx: click.Context, out: Path, steps: int, overwrite: bool, quiet: bool, malloc: str
) -> None:
    """Run the whole pipeline offline in seconds with tiny RANDOM models.

    No pretrained weights are needed; the pictures mean nothing. It shows that
    the installation works and writes every output a real run writes. Its run
    config (OUT/demo-inputs/demo.toml) can be edited and run again with
    `soundguide edit`.
    """
    from soundguide.cli_malloc import malloc_policy
    from soundguide.core.engine import Stop
    from soundguide.demo import BANNER, demo_config, run_demo

    out = out.expanduser()
    click.echo(BANNER, err=True)
    stop = Stop()
    with stop_on_signals(stop) as received, malloc_policy(malloc):
        try:
            result = run_demo(
                out,
                steps=steps,
                overwrite=overwrite,
                progress=not quiet,
                stop=stop,
                registries=_registries(ctx),
            )
        except KeyboardInterrupt:
            click.echo("interrupted before the first step", err=True)
            ctx.exit(_exit_code("interrupted", received))
    config = demo_config(out)
    click.echo(f"run config: {config} (edit it, or run it again: soundguide edit {config})")
    _report(ctx, result, out, received)


@cli.command(short_help="List the plugins and what each registered.")
@plugin_option
@click.pass_context
def plugins(ctx: click.Context) -> None:
    """List the loaded plugins: kind, name, plugin module and distribution.

    Kinds: generator, guidance, regularizer, inverter, weights and command (the
    subcommands plugins add; those of soundguide itself are not listed).
    """
    registries = _registries(ctx)
    rows = [("KIND", "NAME", "PLUGIN", "DISTRIBUTION")]
    for registry in registries.plugin_registries():
        for entry in registry:
            rows.append((registry.kind, entry.name, entry.plugin, entry.distribution))
    for weights in registries.weights:
        rows.append(("weights", weights.name, *registries.weights.owner(weights.name)))
    for name in registries.commands.names():
        rows.append(("command", name, *registries.commands.owner(name)))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        click.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


@cli.group(short_help="Check or show run configs.")
def config() -> None:
    """Check or show run configs."""


@config.command("check", short_help="Validate a run config and its input files.")
@click.argument("path", type=click.Path(path_type=Path))
@set_option
@plugin_option
@click.pass_context
def config_check(
    ctx: click.Context, path: Path, overrides: tuple[str, ...], preset: str | None
) -> None:
    """Validate a run config and check its input files, without running it."""
    from soundguide.core.config import load_config
    from soundguide.core.inputs import check_inputs, run_inputs

    registries = _registries(ctx)
    cfg = load_config(path, registries, _overrides(overrides, preset))
    inputs = run_inputs(cfg)
    notes = check_inputs(inputs, registries.weights, download=False, source=str(path))
    for note in notes:
        click.echo(f"note: {note}", err=True)
    sources = ", ".join(f"{g.type}@{g.weight:g}" for g in cfg.guidance)
    regs = ", ".join(f"{r.type}@{r.weight:g}" for r in cfg.regularizer) or "none"
    click.echo(
        f"ok: {path}: generator {cfg.generator.type}; guidance {sources}; regularizers {regs}; "
        f"{cfg.optimization.steps} steps; {len(inputs)} inputs checked"
    )


@config.command("show", short_help="Print the resolved config as JSON.")
@click.argument("path", type=click.Path(path_type=Path))
@set_option
@plugin_option
@click.pass_context
def config_show(
    ctx: click.Context, path: Path, overrides: tuple[str, ...], preset: str | None
) -> None:
    """Print the resolved config (defaults filled in, paths absolute) as JSON."""
    from soundguide.core.config import load_config

    cfg = load_config(path, _registries(ctx), _overrides(overrides, preset))
    click.echo(json.dumps(cfg.model_dump(mode="json"), indent=2))


@cli.group(short_help="Known pretrained weights: list, download, verify.")
def weights() -> None:
    """Known pretrained weights: list, download, verify."""


@weights.command("list", short_help="List the known weights and their state.")
@plugin_option
@click.pass_context
def weights_list(ctx: click.Context) -> None:
    """List the known weights and whether each is downloaded."""
    registry = _registries(ctx).weights
    if not len(registry):
        click.echo("no known weights registered")
        return
    for entry in registry:
        path = registry.local_path(entry.name)
        state = "downloaded" if path.exists() else "not downloaded"
        click.echo(
            f"{entry.name}  [{state}]  {entry.license}  {entry.url or '(no public download)'}"
        )
        if entry.description:
            click.echo(f"    {entry.description}")
        click.echo(f"    -> {path}")


@weights.command("download", short_help="Download known weights into the cache.")
@click.argument("names", nargs=-1, required=True)
@click.option("--force", is_flag=True, help="Download again even if the file exists.")
@plugin_option
@click.pass_context
def weights_download(ctx: click.Context, names: tuple[str, ...], force: bool) -> None:
    """Download known weights into the cache ($SOUNDGUIDE_HOME/weights)."""
    registry = _registries(ctx).weights
    for name in names:
        path = registry.download(name) if force else registry.fetch(name)
        click.echo(f"{name}: {path}")


@weights.command("verify", short_help="Check downloaded files against their sha256.")
@click.argument("names", nargs=-1)
@plugin_option
@click.pass_context
def weights_verify(ctx: click.Context, names: tuple[str, ...]) -> None:
    """Check downloaded files against their sha256 (all downloaded ones by default)."""
    registry = _registries(ctx).weights
    selected = list(names) or [e.name for e in registry if registry.local_path(e.name).exists()]
    failed = False
    for name in selected:
        status, detail = registry.verify(name)
        click.echo(f"{name}: {status} ({detail})")
        failed |= status in ("mismatch", "missing")
    if failed:
        ctx.exit(EXIT_BAD_INPUT)


def _show_warning(message: Any, category: type[Warning], *_args: Any, **_kwargs: Any) -> None:
    click.echo(f"warning: {message}", err=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    warnings.showwarning = _show_warning
    try:
        code = cli.main(
            args=list(argv) if argv is not None else None,
            prog_name="soundguide",
            standalone_mode=False,
        )
    except SoundguideError as exc:
        click.echo(f"error: {exc.message}", err=True)
        if exc.hint:
            click.echo(f"hint: {exc.hint}", err=True)
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except (click.Abort, KeyboardInterrupt):
        click.echo("interrupted", err=True)
        return EXIT_INTERRUPTED
    return code if isinstance(code, int) else 0


def run() -> None:  # console script
    sys.exit(main())


if __name__ == "__main__":
    run()
