"""``soundguide app``: serve the page (:mod:`soundguide.app.page`) with Gradio.

Binds to 127.0.0.1 unless ``--host`` says otherwise (a warning then: whoever
reaches the port uses the device). One run at a time (Gradio's queue, which
shows the others their position); uploads go to a temporary folder removed at
exit, and are copied into the run's folder under ``--history`` when a run uses
them. Networks load once and are shared between runs
(:class:`~soundguide.core.interfaces.ModelStore`). ``--demo`` serves the tiny
random models of ``soundguide demo`` (written once under ``--history``, so the
configs of demo runs keep working) and says so on the page.

This command owns its process: it sets Gradio's environment (no analytics, its
upload folder), turns SIGTERM into a clean exit and restores both at the end.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from soundguide.app.plugin import APP_HELP
from soundguide.cli_options import device_option, plugin_option

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
REQUIRED = ("gradio", "tomli_w")
"""The modules of the ``app`` extra."""
DEMO_GENERATOR = "demo: tiny random StyleGAN2 (32 px)"


def require_gradio() -> None:
    """One line, exit 2, when the ``app`` extra is missing."""
    from soundguide.core.errors import SoundguideError

    missing = [m for m in REQUIRED if importlib.util.find_spec(m) is None]
    if missing:
        raise SoundguideError(
            f"the web app needs {' and '.join(missing)}: pip install 'soundguide[app]'"
        )


@contextlib.contextmanager
def app_process(temp: Path) -> Iterator[None]:
    """Gradio's environment for this process, and SIGTERM as Ctrl-C; both restored after."""
    settings = {"GRADIO_TEMP_DIR": str(temp / "uploads"), "GRADIO_ANALYTICS_ENABLED": "False"}
    before = {k: os.environ.get(k) for k in settings}
    os.environ.update(settings)

    def interrupt(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def demo_models(history: Path) -> dict[str, str]:
    """The demo's tiny random models under ``history/demo-models`` (written once)."""
    from soundguide.demo import write_demo_inputs

    folder = history / "demo-models"
    names = {
        "generator": "stylegan2-tiny.pt",
        "clip": "clip-tiny.pt",
        "audio_encoder": "soundclip-random.pt",
    }
    if not all((folder / n).is_file() for n in names.values()):
        write_demo_inputs(folder)
    return {k: str((folder / n).resolve()) for k, n in names.items()}


@click.command("app", short_help=APP_HELP)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to serve on.")
@click.option("--port", type=click.IntRange(0, 65535), default=7860, show_default=True)
@device_option
@click.option(
    "--history",
    type=click.Path(path_type=Path),
    default=Path("runs/app"),
    show_default=True,
    help="Folder of the runs (one subfolder each: inputs, config.toml, outputs).",
)
@click.option("--demo", is_flag=True, help="Serve the tiny RANDOM models (offline, no weights).")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Steps the page proposes.")
@plugin_option
@click.pass_context
def app(
    ctx: click.Context,
    host: str,
    port: int,
    device: str,
    history: Path,
    demo: bool,
    steps: int | None,
) -> None:
    """Serve the web app: drop in a sound, type a prompt, drag the weights, watch the image.

    It runs the same engine, configs and plugins as `soundguide edit`; each
    run's folder under --history holds its config.toml, which `soundguide edit`
    runs again with the same result.
    """
    require_gradio()
    from soundguide.app.configs import MAX_UPLOAD_BYTES, generator_choices
    from soundguide.cli_options import _registries
    from soundguide.core.engine import resolve_device

    registries = _registries(ctx)
    resolved = resolve_device(device)
    if host not in LOCAL_HOSTS:
        click.echo(
            f"warning: serving on {host}: anyone who reaches port {port} of this machine can "
            "run edits on its device and read the run folders",
            err=True,
        )
    history = history.expanduser().resolve()
    history.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix="soundguide-app-"))
    click.echo(f"temporary folder: {temp}", err=True)
    runner = None
    try:
        with app_process(temp):
            from soundguide.app.page import CSS, PageOptions, build_page
            from soundguide.app.runner import AppRunner

            generators = generator_choices(registries)
            options = PageOptions(generators, history=str(history), device=str(resolved))
            extra: dict[str, Any] = {}
            if demo:
                from soundguide.demo import BANNER

                models = demo_models(history)
                generators = {
                    DEMO_GENERATOR: {"type": "stylegan2", "checkpoint": models["generator"]},
                    **generators,
                }
                options = PageOptions(
                    generators,
                    clip_model=models["clip"],
                    audio_encoder=models["audio_encoder"],
                    demo_banner=BANNER,
                    history=str(history),
                    steps=20,
                    device=str(resolved),
                )
                extra = {"demo": BANNER}
            if steps is not None:
                options.steps = steps
            options.scratch = temp / "page"
            runner = AppRunner(registries, history=history, device=resolved, extra_manifest=extra)
            page = build_page(runner, options)
            page.queue(default_concurrency_limit=1)
            try:
                page.launch(
                    server_name=host,
                    server_port=port,
                    max_file_size=MAX_UPLOAD_BYTES,
                    allowed_paths=[str(history)],
                    show_error=False,
                    css=CSS,
                    quiet=False,
                )
            except KeyboardInterrupt:
                pass
            finally:
                runner.stop_all()
                page.close()
    finally:
        shutil.rmtree(temp, ignore_errors=True)
        click.echo("stopped; temporary folder removed", err=True)
