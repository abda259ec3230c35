"""``soundguide video CONFIG --out DIR``: the command of :func:`soundguide.video.run.make_video`.

Flags override the config: ``--fps`` the recording's ``over_time.fps``,
``--chunk``, ``--overlap`` and ``--frames`` the ``[video]`` table, ``--set``
anything. Ctrl-C / SIGTERM stop the chunk in progress (dropped) and write the
finished chunks as a playable MP4, exit 130 / 143.
"""

from __future__ import annotations

from pathlib import Path

import click

from soundguide.cli_options import (
    device_option,
    malloc_option,
    plugin_option,
    trust_checkpoint_option,
)
from soundguide.video.plugin import VIDEO_HELP


@click.command("video", short_help=VIDEO_HELP)
@click.argument("config", type=click.Path(path_type=Path))
@click.option(
    "--out", type=click.Path(path_type=Path), help="Output folder (default: [output] dir)."
)
@click.option(
    "--fps",
    type=click.FloatRange(min=0, min_open=True, max=240),
    help="Frames per second (the recording's over_time.fps).",
)
@click.option("--frames", is_flag=True, default=None, help="Also write frames/NNNNN.png.")
@click.option("--chunk", type=click.IntRange(min=1, max=1024), help="Frames optimized together.")
@click.option("--overlap", type=click.IntRange(min=0), help="Fixed frames before each chunk.")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="SECTION.KEY=VALUE",
    help="Override a config value (repeatable), e.g. --set video.chunk=8.",
)
@click.option("--overwrite", is_flag=True, help="Replace soundguide's outputs in --out.")
@device_option
@trust_checkpoint_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@malloc_option
@plugin_option
@click.pass_context
def video(
    ctx: click.Context,
    config: Path,
    out: Path | None,
    fps: float | None,
    frames: bool | None,
    chunk: int | None,
    overlap: int | None,
    overrides: tuple[str, ...],
    overwrite: bool,
    device: str,
    trust_checkpoint: bool,
    quiet: bool,
    malloc: str,
) -> None:
    """Make a video from the recording of CONFIG's audio guidance (the one with
    over_time): one target per frame, frames optimized in chunks, the MP4 with the
    recording's sound. Needs PyAV: pip install 'soundguide[video]'."""
    from soundguide.cli import _exit_code, stop_on_signals
    from soundguide.cli_malloc import malloc_policy
    from soundguide.cli_options import _registries
    from soundguide.core.config import load_config, parse_override
    from soundguide.core.engine import Stop
    from soundguide.plugins.audio import OverTime
    from soundguide.video.mp4 import import_av
    from soundguide.video.run import make_video
    from soundguide.video.settings import recording_index, video_config

    import_av()
    registries = _registries(ctx)
    flags = [
        f"video.{name}={str(value).lower()}"
        for name, value in (("chunk", chunk), ("overlap", overlap), ("frames", frames))
        if value is not None
    ]
    sets = [*overrides, *flags]
    run_config = load_config(config, registries, sets)
    overridden = [parse_override(s)[0] for s in sets]
    settings = video_config(run_config.video, config.parent, str(config), overridden)
    if fps is not None:
        index = recording_index(run_config)
        recording = run_config.guidance[index]
        kept = (recording.over_time or OverTime()).model_dump(exclude={"fps", "hop"})
        recording.over_time = OverTime(**kept, fps=fps)
    folder = out.expanduser() if out is not None else run_config.output.dir
    stop = Stop()
    with stop_on_signals(stop) as received, malloc_policy(malloc):
        try:
            result = make_video(
                run_config,
                settings,
                out=folder,
                registries=registries,
                overwrite=overwrite,
                device=device,
                trust_checkpoint=trust_checkpoint,
                progress=not quiet,
                stop=stop,
                stopped=lambda: bool(received),
            )
        except KeyboardInterrupt:
            click.echo("interrupted before the first frame; nothing was written", err=True)
            ctx.exit(_exit_code("interrupted", received))
    per_frame = (
        f", {result.optimize_seconds / result.frames_done:.3f} s/frame"
        if result.frames_done
        else ""
    )
    said = f"{result.message} ({result.frames_done}/{result.frames} frames at {result.fps:g} fps{per_frame})"
    if result.ok and not received:
        click.echo(f"{said}; outputs in {folder}")
        return
    click.echo(f"error: {said}; outputs in {folder}", err=True)
    ctx.exit(_exit_code(result.status, received))
