"""The page: a ``gr.Blocks`` whose Run button builds a run config and streams the run.

Left, the sources (sounds uploaded or recorded, prompts, reference pictures,
each with a weight from -1 to 1; any third-party guidance with a form made from
its pydantic ``Config``); then the start, the generator, the regularizers and
the optimization. Right, the run: previews every k steps, the loss of each
term, progress and s/step, Stop; then source | edited, the trajectory GIF, the
files, the run config as TOML, and the history of this session's runs. Every
error is one line in the status box (the CLI's message), never a traceback.
"""

from __future__ import annotations

import html
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from soundguide.app.configs import (
    BUILTIN_SOURCES,
    START_MODES,
    FieldSpec,
    PageRun,
    Source,
    check_audio,
    check_image,
    field_specs,
    form_values,
)
from soundguide.app.runner import AppRunner, RunHandle, error_line

SLOTS = {"audio": 3, "text": 3, "image": 2}
"""Source slots per kind on the page ("+ sound" shows the next one)."""
SHOWN_SIDE = 256
"""Previews smaller than this are enlarged (nearest) for the page; downloads are untouched."""
YIELD_EVERY = 0.5
"""Fewest seconds between two refreshes of the page while a run streams (status,
progress, the latest preview): a browser on the same CPU slows the steps."""
PLOT_EVERY = 2.0
"""Fewest seconds between two redraws of the loss plot (the costliest to draw)."""
OUTPUT_NAMES = (
    "edited.png",
    "source.png",
    "comparison.png",
    "photo.png",
    "latent_edited.pt",
    "latent_source.pt",
    "run.json",
    "config.toml",
    "losses.csv",
    "trajectory.gif",
)

TRACK_DOWNLOADS = gr.Progress(track_tqdm=True)
"""The run's downloads of known weights (tqdm bars) show their progress on the page."""

CSS = """
#demo-banner {background:#b91c1c;color:white;padding:10px 14px;border-radius:8px;font-size:1.05em}
#status {min-height:2.4em}
#status .error {color:#b91c1c;font-weight:600}
#progress progress {width:100%;height:14px}
"""


@dataclass
class PageOptions:
    """What the command tells the page."""

    generators: dict[str, dict[str, Any]]
    """Label -> generator table (the dropdown; the first is the default)."""
    clip_model: str = "ViT-B/32"
    audio_encoder: str = "soundclip-resnet18-57"
    demo_banner: str | None = None
    history: str = ""
    steps: int = 100
    device: str = "cpu"
    scratch: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / "soundguide-page")
    """Where the page writes its display copies (the command's temporary folder)."""


def status_html(text: str, *, error: bool = False) -> str:
    cls = "error" if error or text.startswith("error:") else "ok"
    return f'<div class="{cls}">{html.escape(text)}</div>'


def progress_html(step: int, steps: int, seconds: float | None) -> str:
    rate = f" · {seconds:.3f} s/step" if seconds else ""
    return (
        f'<progress value="{step}" max="{max(steps, 1)}"></progress>'
        f"<div>step {step} / {steps}{rate}</div>"
    )


def shown(image: Any) -> Any:
    """A (n, 3, H, W) batch (or a picture file) as a PIL picture for the page."""
    from PIL import Image

    from soundguide.core.outputs import batch_column

    picture = Image.open(image).convert("RGB") if isinstance(image, str | Path) else None
    if picture is None:
        picture = batch_column(image)
    scale = max(1, SHOWN_SIDE // max(1, min(picture.size)))
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    return picture


def shown_gif(path: Path, folder: Path) -> str:
    """``path`` enlarged like :func:`shown` for the page (a copy in ``folder``)."""
    from PIL import Image, ImageSequence

    with Image.open(path) as gif:
        frames = [frame.convert("RGB") for frame in ImageSequence.Iterator(gif)]
        duration = gif.info.get("duration", 80)
    scale = max(1, SHOWN_SIDE // max(1, min(frames[0].size)))
    if scale == 1:
        return str(path)
    big = [f.resize((f.width * scale, f.height * scale), Image.NEAREST) for f in frames]
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{path.parent.name}-trajectory.gif"
    big[0].save(target, save_all=True, append_images=big[1:], duration=duration, loop=0)
    return str(target)


def _loss_frame(rows: list[tuple[int, str, float]]) -> Any:
    import pandas as pd

    return pd.DataFrame(rows, columns=["step", "term", "loss"])


def _widget(spec: FieldSpec, elem_id: str) -> gr.components.Component:
    label = spec.name + (" (required)" if spec.required else "")
    info = spec.description or None
    if spec.widget == "checkbox":
        return gr.Checkbox(value=bool(spec.default), label=label, info=info, elem_id=elem_id)
    if spec.widget in ("integer", "number") and spec.default is None:
        # empty means "not set": a Number box would send 0 for it
        return gr.Textbox(value="", label=label, info=info, placeholder="not set", elem_id=elem_id)
    if spec.widget in ("integer", "number"):
        return gr.Number(
            value=spec.default,
            label=label,
            info=info,
            precision=0 if spec.widget == "integer" else None,
            elem_id=elem_id,
        )
    if spec.widget == "choice":
        return gr.Dropdown(
            choices=spec.choices, value=spec.default, label=label, info=info, elem_id=elem_id
        )
    value = "" if spec.default is None else spec.default
    if spec.widget == "toml" and value != "":
        import json

        value = json.dumps(value)  # a JSON list or string is a TOML value too
    return gr.Textbox(value=str(value), label=label, info=info, elem_id=elem_id)


def build_page(runner: AppRunner, options: PageOptions) -> gr.Blocks:
    """The app's page over ``runner`` (one run at a time; the queue shows positions)."""
    registries = runner.registries
    with gr.Blocks(title="soundguide") as page:
        if options.demo_banner:
            gr.HTML(f'<div id="demo-banner"><b>{html.escape(options.demo_banner)}</b></div>')
        gr.Markdown(
            "## soundguide — edit images with sound, text and pictures\n"
            f"Device: `{options.device}` · runs are saved under `{options.history}`"
        )
        with gr.Row():
            with gr.Column(scale=5):
                slots: dict[str, list[tuple[Any, Any, Any, Any]]] = {}
                flags: dict[str, gr.State] = {}
                adders: dict[str, gr.Button] = {}
                for kind, count in SLOTS.items():
                    title = {"audio": "Sounds", "text": "Prompts", "image": "Reference pictures"}
                    gr.Markdown(f"### {title[kind]}")
                    flags[kind] = gr.State([i == 0 and kind != "image" for i in range(count)])
                    slots[kind] = []
                    for i in range(count):
                        with gr.Group(visible=i == 0 and kind != "image") as group:
                            if kind == "audio":
                                value = gr.Audio(
                                    sources=["upload", "microphone"],
                                    type="filepath",
                                    format=None,
                                    label=f"sound {i + 1} (upload or record, at most 10 min)",
                                    elem_id=f"audio-{i}",
                                )
                            elif kind == "text":
                                value = gr.Textbox(
                                    label=f"prompt {i + 1}",
                                    placeholder="a burning forest",
                                    elem_id=f"prompt-{i}",
                                )
                            else:
                                value = gr.Image(
                                    type="filepath",
                                    label=f"picture {i + 1} (at most 50 MP)",
                                    elem_id=f"image-{i}",
                                )
                            with gr.Row():
                                weight = gr.Slider(
                                    -1,
                                    1,
                                    value=1.0 if kind == "audio" else 0.5,
                                    step=0.05,
                                    label="weight (negative pushes away)",
                                    elem_id=f"{kind}-weight-{i}",
                                    scale=4,
                                )
                                remove = gr.Button(
                                    "remove", size="sm", scale=1, elem_id=f"remove-{kind}-{i}"
                                )
                        slots[kind].append((group, value, weight, remove))
                    adders[kind] = gr.Button(
                        {"audio": "+ sound", "text": "+ prompt", "image": "+ picture"}[kind],
                        size="sm",
                        elem_id=f"add-{kind}",
                    )

                plugin_forms: list[tuple[str, Any, Any, list[FieldSpec], list[Any]]] = []
                others = [e for e in registries.guidances if e.name not in BUILTIN_SOURCES]
                if others:
                    gr.Markdown("### Plugin sources")
                for entry in others:
                    specs = field_specs(entry.config_model)
                    # a group, not an accordion: text typed just after opening one was lost
                    with gr.Group():
                        gr.Markdown(f"**{entry.name}** ({entry.plugin})")
                        use = gr.Checkbox(
                            label=f"use {entry.name}", value=False, elem_id=f"use-{entry.name}"
                        )
                        weight = gr.Slider(
                            -1, 1, value=1.0, step=0.05, label="weight", elem_id=f"{entry.name}-w"
                        )
                        widgets = [_widget(s, f"{entry.name}-{s.name}") for s in specs]
                    plugin_forms.append((entry.name, use, weight, specs, widgets))

                gr.Markdown("### Start")
                start = gr.Radio(list(START_MODES), value="seed", label="from", elem_id="start")
                with gr.Row():
                    seed = gr.Number(value=0, precision=0, label="seed", elem_id="seed", scale=4)
                    dice = gr.Button("random", size="sm", elem_id="random-seed", scale=1)
                truncation = gr.Slider(0, 1, value=0.7, step=0.05, label="truncation")
                latent_file = gr.File(
                    label="latent file (.pt)", visible=False, elem_id="latent-file"
                )
                with gr.Group(visible=False) as photo_group:
                    photo = gr.Image(type="filepath", label="photo (inverted first)")
                    inverter = gr.Dropdown(
                        registries.inverters.names(),
                        value="projection" if "projection" in registries.inverters else None,
                        label="inverter",
                    )

                gr.Markdown("### Generator")
                labels = list(options.generators)
                generator = gr.Dropdown(
                    labels, value=labels[0] if labels else None, label="model", elem_id="generator"
                )
                checkpoint = gr.Textbox(
                    label="checkpoint file (a path on this machine)",
                    visible=bool(labels)
                    and options.generators[labels[0]].get("checkpoint", 1) is None,
                    elem_id="checkpoint",
                )
                with gr.Group(elem_id="encoders"):
                    clip_model = gr.Textbox(
                        value=options.clip_model,
                        label="CLIP model (name or file)",
                        elem_id="clip-model",
                    )
                    audio_encoder = gr.Textbox(
                        value=options.audio_encoder,
                        label="SoundCLIP weights (name or file)",
                        elem_id="audio-encoder",
                    )

                gr.Markdown("### Regularizers")
                regs = {
                    name: gr.Number(
                        value=0.002 if name == "latent_l2" else 0.0,
                        label=f"{name} weight (0: off)",
                        elem_id=f"reg-{name}",
                    )
                    for name in registries.regularizers.names()
                }

                gr.Markdown("### Optimization")
                with gr.Row():
                    steps = gr.Number(
                        value=options.steps, precision=0, label="steps", elem_id="steps"
                    )
                    lr = gr.Number(value=0.1, label="lr", elem_id="lr")
                    schedule = gr.Dropdown(["cosine", "constant"], value="cosine", label="schedule")
                with gr.Row():
                    paper = gr.Checkbox(label="paper preset", elem_id="paper")
                    preview_every = gr.Number(
                        value=5, precision=0, label="preview every k steps", elem_id="preview-every"
                    )

            with gr.Column(scale=7):
                with gr.Row():
                    run_btn = gr.Button("Run", variant="primary", elem_id="run")
                    stop_btn = gr.Button("Stop", variant="stop", elem_id="stop")
                status = gr.HTML(status_html("ready"), elem_id="status")
                bar = gr.HTML("", elem_id="progress")
                with gr.Row():
                    preview = gr.Image(label="preview", elem_id="preview", interactive=False)
                    losses = gr.LinePlot(
                        x="step", y="loss", color="term", label="losses", elem_id="losses"
                    )
                with gr.Row():
                    source_img = gr.Image(label="source", elem_id="source", interactive=False)
                    edited_img = gr.Image(label="edited", elem_id="edited", interactive=False)
                    gif = gr.Image(label="trajectory", elem_id="trajectory", interactive=False)
                downloads = gr.File(
                    label="files", file_count="multiple", elem_id="downloads", interactive=False
                )
                toml_box = gr.Code(
                    label="run config (TOML): soundguide edit config.toml reproduces the run",
                    language=None,
                    elem_id="toml",
                    interactive=False,
                )
                history_state = gr.State([])
                history = gr.Gallery(
                    label="this session's runs (edited images)",
                    columns=8,
                    height=180,
                    allow_preview=False,
                    object_fit="contain",
                    fit_columns=False,
                    elem_id="history",
                )

        # -- sources: add, remove, check uploads ----------------------------------------
        for kind, kind_slots in slots.items():
            groups = [g for g, _, _, _ in kind_slots]

            def add(current: list[bool], groups=groups):
                current = list(current)
                if False in current:
                    current[current.index(False)] = True
                return [current, *(gr.update(visible=v) for v in current)]

            adders[kind].click(
                add, inputs=flags[kind], outputs=[flags[kind], *groups], concurrency_limit=None
            )
            for i, (group, value, _weight, remove) in enumerate(kind_slots):

                def drop(current: list[bool], i=i):
                    current = list(current)
                    current[i] = False
                    return current, gr.update(visible=False), None

                remove.click(
                    drop,
                    inputs=flags[kind],
                    outputs=[flags[kind], group, value],
                    concurrency_limit=None,
                )
                if kind == "audio":
                    value.upload(
                        _check_upload(check_audio, "sound"),
                        inputs=value,
                        outputs=[status, value],
                        concurrency_limit=None,
                    )
                elif kind == "image":
                    value.upload(
                        _check_upload(lambda p: check_image(p, what="reference image"), "picture"),
                        inputs=value,
                        outputs=[status, value],
                        concurrency_limit=None,
                    )
        photo.upload(
            _check_upload(lambda p: check_image(p, what="photo"), "photo"),
            inputs=photo,
            outputs=[status, photo],
            concurrency_limit=None,
        )

        def on_start(mode: str):
            return (
                gr.update(visible=mode == "latent file"),
                gr.update(visible=mode == "photo"),
                gr.update(interactive=mode in ("seed", "photo")),
            )

        start.change(
            on_start, inputs=start, outputs=[latent_file, photo_group, seed], concurrency_limit=None
        )
        dice.click(lambda: random.randint(0, 2**31 - 1), outputs=seed, concurrency_limit=None)

        def on_generator(label: str):
            table = options.generators.get(label, {})
            return gr.update(visible="checkpoint" in table and table["checkpoint"] is None)

        generator.change(on_generator, inputs=generator, outputs=checkpoint, concurrency_limit=None)

        # -- the run --------------------------------------------------------------------
        inputs = {
            start,
            seed,
            truncation,
            latent_file,
            photo,
            inverter,
            generator,
            checkpoint,
            clip_model,
            audio_encoder,
            steps,
            lr,
            schedule,
            paper,
            preview_every,
            history_state,
            *flags.values(),
            *regs.values(),
        }
        for kind_slots in slots.values():
            for _, value, weight, _ in kind_slots:
                inputs |= {value, weight}
        for _, use, weight, _, widgets in plugin_forms:
            inputs |= {use, weight, *widgets}

        def collect(v: dict[Any, Any]) -> PageRun:
            sources: list[Source] = []
            for kind, kind_slots in slots.items():
                for on, (_, value, weight, _) in zip(v[flags[kind]], kind_slots, strict=True):
                    filled = v[value] if kind != "text" else str(v[value] or "").strip()
                    if on and filled:
                        sources.append(Source(kind, filled, float(v[weight])))
            for name, use, weight, specs, widgets in plugin_forms:
                if v[use]:
                    table = form_values(specs, [v[w] for w in widgets])
                    sources.append(Source(name, table, float(v[weight])))
            table = dict(options.generators.get(v[generator], {}))
            if "checkpoint" in table and table["checkpoint"] is None:
                table["checkpoint"] = str(v[checkpoint] or "").strip()
            latent = v[latent_file]
            return PageRun(
                sources=sources,
                generator=table,
                clip_model=str(v[clip_model]).strip(),
                audio_encoder=str(v[audio_encoder]).strip(),
                start=v[start],
                seed=int(v[seed] or 0),
                truncation=float(v[truncation]),
                latent=getattr(latent, "name", latent),
                photo=v[photo],
                inverter=v[inverter] or "projection",
                regularizers={name: float(v[box] or 0) for name, box in regs.items()},
                steps=int(v[steps] or 0),
                lr=float(v[lr] or 0),
                schedule=v[schedule],
                paper=bool(v[paper]),
            )

        def run(v: dict[Any, Any], request: gr.Request, progress=TRACK_DOWNLOADS):
            from soundguide.core.inputs import check_inputs, run_inputs

            session = getattr(request, "session_hash", None)
            try:
                page_run = collect(v)
                config = runner.check(page_run)
                # known weights are downloaded here, where the page shows their progress
                check_inputs(run_inputs(config), registries.weights, download=True, progress=True)
                handle = runner.start(
                    page_run, preview_every=int(v[preview_every] or 1), session=session
                )
            except Exception as exc:
                yield {status: status_html(error_line(exc), error=True), bar: ""}
                return
            yield {
                status: status_html(f"running in {handle.folder}"),
                bar: progress_html(0, page_run.steps, None),
                preview: None,
                source_img: None,
                edited_img: None,
                gif: None,
                downloads: None,
                toml_box: handle.toml,
            }
            try:
                yield from _stream(handle, v[history_state])
            finally:
                if handle.result is None and handle.error is None:
                    handle.request_stop()  # the page went away: keep what exists, free the device

        def _stream(handle: RunHandle, past: list[Any]):
            rows: list[tuple[int, str, float]] = []
            last = last_plot = 0.0
            latest = None
            for update in handle.updates():
                if update.kind == "error":
                    yield {status: status_html(update.error or "error", error=True), bar: ""}
                    return
                if update.kind == "done":
                    yield _finished(handle, past, rows)
                    return
                rows.extend((update.step, k, v) for k, v in update.losses.items())
                if update.image is not None:
                    latest = update.image
                now = time.perf_counter()
                first = update.step == 0 and update.image is not None
                if not first and now - last < YIELD_EVERY:
                    continue  # the page is refreshed at most every YIELD_EVERY seconds
                last = now
                out: dict[Any, Any] = {
                    bar: progress_html(update.step, update.steps, update.seconds_per_step),
                    status: status_html(
                        f"stopping after step {update.step}"
                        if handle.stop.requested
                        else f"running: step {update.step} of {update.steps}"
                    ),
                }
                if latest is not None:
                    out[preview] = shown(latest)
                    if first:
                        out[source_img] = out[preview]  # a photo: its reconstruction
                    latest = None
                if now - last_plot >= PLOT_EVERY:
                    last_plot = now
                    out[losses] = _loss_frame(rows)
                yield out

        def _finished(handle: RunHandle, past: list[Any], rows: list[Any]) -> dict[Any, Any]:
            result = handle.result
            folder = handle.folder
            files = [str(folder / n) for n in OUTPUT_NAMES if (folder / n).is_file()]
            edited = folder / "edited.png"
            word = {"interrupted": "stopped", "finished": "finished"}.get(result.status)
            text = f"{word or result.status}: {result.message}; outputs in {folder}"
            if result.status not in ("finished", "interrupted"):
                text = "error: " + text
            new_past = list(past)
            if edited.is_file():
                new_past.append((str(edited), f"{folder.name} ({result.status})"))
            seconds = result.step_seconds
            return {
                status: status_html(text),
                bar: progress_html(
                    result.steps_done,
                    handle.config.optimization.steps,
                    sum(seconds) / len(seconds) if seconds else None,
                ),
                losses: _loss_frame(rows),
                source_img: shown(folder / "source.png")
                if (folder / "source.png").is_file()
                else None,
                edited_img: shown(edited) if edited.is_file() else None,
                preview: shown(edited) if edited.is_file() else gr.update(),
                gif: shown_gif(folder / "trajectory.gif", options.scratch)
                if (folder / "trajectory.gif").is_file()
                else None,
                downloads: files,
                toml_box: handle.toml,
                history_state: new_past,
                history: new_past,
            }

        run_btn.click(
            run,
            inputs=inputs,
            outputs=[
                status,
                bar,
                preview,
                losses,
                source_img,
                edited_img,
                gif,
                downloads,
                toml_box,
                history_state,
                history,
            ],
            show_progress="hidden",  # the page has its own bar; a ticking timer costs CPU
            concurrency_id="run",
        )

        def stop(request: gr.Request):
            session = getattr(request, "session_hash", None)
            if runner.stop(session):
                return status_html("stopping after the current step; the outputs are kept")
            return gr.update()

        stop_btn.click(stop, outputs=status, concurrency_limit=None, concurrency_id="stop")
    return page


def _check_upload(check: Any, what: str):
    """An upload handler: the file checked as the CLI would, the error line shown and
    the upload dropped when it cannot be used."""

    def handle(path: str | None):
        if not path:
            return gr.update(), gr.update()
        try:
            check(path)
        except Exception as exc:
            return status_html(error_line(exc), error=True), None
        return status_html(f"{what} {Path(path).name}: ok"), gr.update()

    return handle
