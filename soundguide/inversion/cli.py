"""``soundguide invert``: real photos to latents of a generator, one folder per photo.

Each photo is read, aligned (``--align``: faces, FFHQ's recipe) or resized and
centre-cropped, inverted with ``--method`` and written to ``OUT/<photo name>/``
(see :data:`soundguide.core.runfolder.INVERT_FILES`)::

    latent.pt            {"latent": (1, L, D), "noise": [...] or None}: ``latent =`` in a run config
    aligned.png          what the inverter saw
    reconstruction.png   the generator's image of the latent
    side_by_side.png     aligned | reconstruction
    invert.json          method, settings, sha256s, MSE/PSNR/LPIPS, seconds

Inversions go into the same cache as an edit's ``optimization.image``, so an
edit of a photo inverted here with the same settings starts at once. Photos
are done one at a time: the outputs of each are written as soon as it is
inverted, and a photo that cannot be used is reported and skipped (exit 2 at
the end) without losing the others. Ctrl-C / SIGTERM stop an iterative
inversion between two steps and write what it has (not cached).
"""

from __future__ import annotations

import datetime as _dt
import json
import sys
from pathlib import Path
from typing import Any

import click

from soundguide.cli_options import device_option, plugin_option, trust_checkpoint_option
from soundguide.inversion.plugin import INVERT_HELP

FILE_SUFFIXES = (".pt", ".pth", ".pkl", ".ckpt")


def generator_table(value: str) -> dict[str, Any]:
    """``--generator``: a ``stylegan2`` preset name, a checkpoint file, or a run
    config (``.toml``) whose ``[generator]`` table is used (any generator type)."""
    from soundguide.core.config import read_toml
    from soundguide.core.errors import ConfigError

    path = Path(value).expanduser()
    if path.suffix.lower() == ".toml":
        table = read_toml(path).get("generator")
        if not isinstance(table, dict):
            raise ConfigError(f"--generator {path}: the config has no [generator] table")
        table = dict(table)
        checkpoint = table.get("checkpoint")
        if isinstance(checkpoint, str) and not Path(checkpoint).expanduser().is_absolute():
            table["checkpoint"] = str(path.parent / checkpoint)  # as the config would read it
        return table
    if path.suffix.lower() in FILE_SUFFIXES or path.exists():
        return {"type": "stylegan2", "checkpoint": str(path)}
    return {"type": "stylegan2", "preset": value}


def _folder_names(photos: list[Path]) -> list[str]:
    """One output subfolder name per photo: its stem, numbered where two share one."""
    names: list[str] = []
    for photo in photos:
        stem = photo.stem or "photo"
        name, k = stem, 2
        while name in names:
            name, k = f"{stem}-{k}", k + 1
        names.append(name)
    return names


@click.command("invert", short_help=INVERT_HELP)
@click.argument("photos", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--generator",
    "generator",
    required=True,
    help="A stylegan2 preset (ffhq, landscape, ...), a rosinality-format checkpoint file, "
    "or a run config (.toml) whose [generator] table is used.",
)
@click.option(
    "--method",
    default="e4e+projection",
    show_default=True,
    help="Inverter: e4e, projection, e4e+projection, or a plugin's.",
)
@click.option("--align", is_flag=True, help="Align faces as FFHQ's (needs soundguide[align]).")
@click.option("--steps", type=click.IntRange(min=0), help="Optimization steps (projection).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output folder.")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="SECTION.KEY=VALUE",
    help="Set a generator or inversion option, e.g. --set inversion.w_plus=true.",
)
@click.option(
    "--lpips/--no-lpips",
    "measure_lpips",
    default=True,
    show_default=True,
    help="Measure the reconstruction's LPIPS (VGG weights downloaded on first use).",
)
@click.option("--overwrite", is_flag=True, help="Replace soundguide's files in --out.")
@device_option
@trust_checkpoint_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@plugin_option
@click.pass_context
def invert(
    ctx: click.Context,
    photos: tuple[Path, ...],
    generator: str,
    method: str,
    align: bool,
    steps: int | None,
    out: Path,
    overrides: tuple[str, ...],
    measure_lpips: bool,
    overwrite: bool,
    device: str,
    trust_checkpoint: bool,
    quiet: bool,
) -> None:
    """Invert PHOTOS into latents of a generator; write one folder per photo into OUT.

    The latent (OUT/NAME/latent.pt) starts an edit with `latent = ...` in a run
    config; or give the photo itself as `[optimization] image = ...` with the
    same [inversion] settings, which finds this inversion in the cache.
    """
    from soundguide.cli import EXIT_BAD_INPUT, _exit_code, stop_on_signals
    from soundguide.cli_options import _registries
    from soundguide.core.config import apply_overrides, parse_override, tables_from_dict
    from soundguide.core.engine import Stop, resolve_device
    from soundguide.core.inputs import Input, check_inputs
    from soundguide.core.interfaces import RunContext
    from soundguide.core.runfolder import RunFolder

    registries = _registries(ctx)
    data: dict[str, Any] = {
        "generator": generator_table(generator),
        "inversion": {"type": method, "align": align},
    }
    if steps is not None:
        known = method in registries.inverters
        if known and "steps" not in registries.inverters.get(method).Config.model_fields:
            from soundguide.core.errors import ConfigError

            raise ConfigError(f"--steps: inverter {method!r} takes no steps (it is not iterative)")
        data["inversion"]["steps"] = steps
    for text in overrides:
        section = parse_override(text)[0][0]
        if section not in data:
            from soundguide.core.errors import ConfigError

            raise ConfigError(
                f"--set {text!r}: soundguide invert takes generator.KEY or inversion.KEY"
            )
    apply_overrides(data, overrides)
    overridden = [parse_override(text)[0] for text in overrides]
    tables = tables_from_dict(
        data,
        registries,
        ("generator", "inversion"),
        source="soundguide invert",
        overridden=overridden,
    )
    folder = RunFolder(out, overwrite=overwrite)
    stop = Stop()
    context = RunContext(
        device=resolve_device(device),
        weights=registries.weights,
        trust_checkpoint=trust_checkpoint,
        progress=not quiet,
    )
    inputs = [
        *tables.generator.inputs("generator"),
        *tables.inversion.inputs("inversion"),
        *(Input(f"photo {i + 1}", p, "file") for i, p in enumerate(photos)),
    ]
    if measure_lpips and getattr(tables.inversion, "lpips", None) is None:
        # an inverter without LPIPS of its own (e4e): the metric needs the VGG16 weights
        from soundguide.inversion.lpips import VGG16_WEIGHTS

        inputs.append(Input("--lpips", VGG16_WEIGHTS.name, "weights"))
    with stop_on_signals(stop) as received:
        try:
            folder.open()
            try:
                check_inputs(
                    inputs,
                    registries.weights,
                    download=True,
                    progress=not quiet,
                    source="soundguide invert",
                )
                session = InvertSession(tables, registries, context, folder.folder, stop)
                stop.phase = "running"
                failed = session.run(list(photos), measure_lpips=measure_lpips)
            except BaseException:
                folder.close(keep=False)  # removes only the folders it created that are empty
                raise
            folder.close(keep=session.written > 0)  # no photo could be used: no folder
        except KeyboardInterrupt:
            click.echo("interrupted before any photo was inverted; nothing was written", err=True)
            ctx.exit(_exit_code("interrupted", received))
    if received or stop.requested:
        click.echo(f"stopped; what was done is in {out}", err=True)
        ctx.exit(_exit_code("interrupted", received))
    if failed:  # each said as it happened
        ctx.exit(EXIT_BAD_INPUT)


class InvertSession:
    """The generator and inverter of one ``soundguide invert`` command, and its outputs."""

    def __init__(self, tables: Any, registries: Any, context: Any, out: Path, stop: Any) -> None:
        from soundguide.core.outputs import file_records
        from soundguide.inversion.photos import (
            check_domain,
            generator_identity,
            inverter_identity,
            should_align,
        )

        self.tables = tables
        self.context = context
        self.out = out
        self.stop = stop
        name = tables.inversion.type
        self.name = name
        self.generator = registries.generators.get(tables.generator.type)(tables.generator, context)
        self.inverter = registries.inverters.get(name)(tables.inversion, context)
        check_domain(self.inverter, name, self.generator)
        self.align = should_align(tables.inversion.align, self.generator)
        self.identity = generator_identity(self.generator, tables.generator.type)
        self.method = inverter_identity(self.inverter, name)
        # hashed once: the weights files may be gigabytes, and every photo's report names them
        self.generator_files = file_records(self.generator.files())
        self.inverter_files = file_records(self.inverter.files())
        self.written = 0

    def lpips(self) -> Any:
        found = getattr(self.inverter, "lpips_distance", None)
        if found is not None:
            return found
        from soundguide.inversion.lpips import VGG16_WEIGHTS, load_lpips

        path = self.context.resolve_weights(VGG16_WEIGHTS.name)
        network = load_lpips(path, self.context.device)
        return lambda a, b: network(a.to(self.context.device), b.to(self.context.device))

    def run(self, photos: list[Path], *, measure_lpips: bool) -> list[str]:
        """Invert each photo and write its folder; returns one line per photo that failed."""
        from soundguide.core.errors import ImageError
        from soundguide.inversion.photos import inversion_key, invert_photo, prepare_photo

        lpips = self.lpips() if measure_lpips else None
        failed: list[str] = []
        for path, name in zip(photos, _folder_names(photos), strict=True):
            if self.stop.requested:
                break
            try:
                photo = prepare_photo(path, self.generator.resolution, align=self.align)
            except ImageError as exc:
                failed.append(str(exc))  # said now, one line, and the next photo goes on
                click.echo(f"error: {exc}", err=True)
                if exc.hint:
                    click.echo(f"hint: {exc.hint}", err=True)
                continue
            key = inversion_key(photo, self.identity, self.method)
            result = invert_photo(
                photo,
                self.generator,
                self.inverter,
                self.context,
                key=key,
                lpips=lpips,
                stop=lambda: self.stop.requested,
            )
            stopped = self.stop.requested and not result.cached
            self.write(self.out / name, result, key, stopped=stopped)
            self.written += 1
            m = result.metrics
            lp = f", LPIPS {m['lpips']:.4f}" if m.get("lpips") is not None else ""
            click.echo(
                f"{path}: PSNR {m['psnr']:.2f} dB{lp}, {result.seconds:.1f} s"
                f"{' (cached)' if result.cached else ''}{' (stopped early)' if stopped else ''}"
                f" -> {self.out / name}"
            )
        return failed

    def write(self, folder: Path, result: Any, key: dict[str, Any], *, stopped: bool) -> None:
        import torch

        from soundguide.core.files import atomic_write, atomic_write_text
        from soundguide.core.outputs import finite_json, grid, package_versions, save_png, to_pil

        folder.mkdir(exist_ok=True)
        latent = {"latent": result.latent, "noise": result.noise}
        atomic_write(folder / "latent.pt", lambda fh: torch.save(latent, fh))
        save_png(folder / "aligned.png", to_pil(result.photo.image))
        save_png(folder / "reconstruction.png", to_pil(result.reconstruction))
        save_png(folder / "side_by_side.png", grid([[result.photo.image, result.reconstruction]]))
        report = {
            "status": "interrupted" if stopped else "finished",
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "command": sys.argv,
            "photo": {
                "path": str(result.photo.path.resolve()),
                "sha256": result.photo.sha256,
                "aligned": result.photo.aligned,
                "quad": result.photo.quad,
            },
            "method": self.name,
            "settings": self.tables.inversion.model_dump(mode="json"),
            "generator": {
                "config": self.tables.generator.model_dump(mode="json"),
                "files": self.generator_files,
            },
            "inverter_files": self.inverter_files,
            "latent_shape": list(result.latent.shape),
            "noise_tuned": result.noise is not None,
            "reconstruction": result.metrics,
            "seconds": result.seconds,
            "cached": result.cached,
            "cache_key": key,
            "device": str(self.context.device),
            "versions": package_versions(),
        }
        text = json.dumps(finite_json(report), indent=2, allow_nan=False) + "\n"
        atomic_write_text(folder / "invert.json", text)
