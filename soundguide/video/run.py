"""``make_video``: a recording -> an MP4 whose picture follows the sound, on the engine.

::

    recording = the audio guidance with over_time (or the only audio guidance)
    targets   = its per-frame targets (T, D), once; other sources constant,
                a [video] timeline's prompts per segment (weight 0 outside them)
    editor    = Editor(config).build()                       # models built once
    for each chunk of frames: editor.run_items(start, targets[chunk], before=overlap)
                -> frames encoded into the MP4 (audio muxed up to them), PNGs

Outputs (one run per folder, with the lock, write probe and ``--overwrite``
of :class:`~soundguide.core.runfolder.RunFolder`): ``video.mp4``,
``latents.pt`` (T, L, D), ``run.json`` (per-frame losses), and with
``frames = true`` ``frames/NNNNN.png``. A stopped run keeps its finished
chunks: a playable MP4 of them with the audio up to their end.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from soundguide.core.engine import Editor, Stop, resolve_device
from soundguide.core.errors import ConfigError
from soundguide.core.runfolder import FRAMES_DIR, RunFolder
from soundguide.video.settings import VideoConfig, recording_index


@dataclass
class VideoResult:
    status: str
    message: str
    frames: int
    """Frames of the whole video (``ceil(seconds * fps)``)."""
    frames_done: int
    fps: float
    seconds: float
    """The recording's duration."""
    latents: torch.Tensor
    losses: list[dict[str, Any]] = field(default_factory=list)
    outputs: dict[str, Path] = field(default_factory=dict)
    optimize_seconds: float = 0.0
    error: BaseException | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.status == "finished"


def _timeline_guidance(
    config: Any, registries: Any, index: int, video: VideoConfig, seconds: float
):
    """The run config with the timeline's text term appended, and the segments."""
    from soundguide.video.timeline import read_timeline

    segments = read_timeline(video.timeline, seconds)
    prompts = sorted({s.prompt for s in segments})
    recording = config.guidance[index]
    clip = {
        k: getattr(recording, k)
        for k in ("clip_model", "clip_preprocess", "clip_cutouts", "clip_dtype", "loss")
    }
    text = registries.guidances.get("text").Config(
        type="text", prompt=prompts, weight=video.timeline_weight, **clip
    )
    return config.model_copy(update={"guidance": [*config.guidance, text]}), segments, prompts


def _start(editor: Editor) -> tuple[torch.Tensor, Callable[[int], None] | None, list[Path]]:
    """The one start latent (1, L, D) of every frame, and what each chunk needs before it."""
    from soundguide.core.latents import load_latent_file

    cfg, gen, ctx = editor.config, editor.generator, editor.context
    opt = cfg.optimization
    if opt.image is not None:
        from soundguide.inversion.photos import start_from_photos

        photos = opt.image if isinstance(opt.image, list) else [opt.image]
        if len(photos) != 1:
            raise ConfigError("optimization.image: a video starts from one photo, got a list")
        started = start_from_photos(
            photos,
            cfg.inversion,
            editor.registries,
            gen,
            cfg.generator.type,
            ctx,
            stop=lambda: editor.stop.requested,
        )

        def before_chunk(n: int) -> None:
            if started.noise is not None:
                gen.use_noise([m.expand(n, -1, -1, -1).to(ctx.device) for m in started.noise])
            ctx.photo = started.photos.expand(n, -1, -1, -1).to(ctx.device)

        return started.latent[:1].to(ctx.device), before_chunk, list(started.files)
    if opt.latent is not None:
        rows = load_latent_file(
            opt.latent,
            gen.num_layers,
            gen.latent_dim,
            index=opt.latent_index,
            trust=ctx.trust_checkpoint,
            max_rows=opt.max_batch,
        )
        if rows.shape[0] != 1:
            raise ConfigError(
                f"optimization.latent: a video starts every frame from one latent; the file "
                f"gives {rows.shape[0]}",
                hint="pick one row with optimization.latent_index = N",
            )
        return rows.to(ctx.device), None, []
    if opt.mode == "generate":
        return gen.mean_latent().detach()[:1].to(ctx.device), None, []
    if isinstance(opt.seed, list):
        raise ConfigError("optimization.seed: a video starts every frame from one seed, got a list")
    g = torch.Generator().manual_seed(opt.seed)
    return gen.sample_latent(1, opt.truncation, g).detach().to(ctx.device), None, []


def make_video(
    config: Any,
    video: VideoConfig,
    *,
    out: str | os.PathLike[str],
    registries: Any,
    overwrite: bool = False,
    device: str | torch.device = "cpu",
    trust_checkpoint: bool = False,
    progress: bool = True,
    stop: Stop | None = None,
    stopped: Callable[[], bool] = lambda: False,
    max_frames: int | None = None,
) -> VideoResult:
    """Make the video a run config with a recording describes; write it into ``out``.

    ``stop`` ends the chunk in progress (dropped); ``stopped()`` is asked between
    chunks. ``max_frames``: optimize only the first frames (a preview; the targets
    are still those of the whole recording; the MP4 and its sound stop there). Nothing process-wide changes. Raises the error of a chunk that failed
    after writing what was done.
    """
    from soundguide.encoders.audio import AudioFile
    from soundguide.encoders.soundclip import SAMPLE_RATE
    from soundguide.video.mp4 import Mp4Writer, import_av
    from soundguide.video.targets import frame_count
    from soundguide.video.timeline import frame_segments

    import_av()  # before anything is loaded: a missing extra is a one-line error
    index = recording_index(config)
    recording = config.guidance[index]
    over = recording.over_time
    if over is None:
        from soundguide.plugins.audio import OverTime

        over = OverTime()
    with AudioFile(recording.path, SAMPLE_RATE) as source:
        seconds = source.num_samples / SAMPLE_RATE
    fps = over.rate
    frames = frame_count(seconds, fps)
    todo = frames if max_frames is None else max(1, min(frames, max_frames))
    segments = prompts = None
    if video.timeline is not None:
        config, segments, prompts = _timeline_guidance(config, registries, index, video, seconds)
    device = resolve_device(device)
    stop = stop if stop is not None else Stop()
    folder = RunFolder(out, overwrite=overwrite)
    folder.open()
    writer = None
    try:
        editor = Editor(
            config,
            registries,
            device=device,
            trust_checkpoint=trust_checkpoint,
            progress=progress,
            stop=stop,
        )
        editor.build()
        editor.progress = False  # the frames bar replaces the per-chunk step bars
        if index not in [t.index for t in editor.guidances]:
            raise ConfigError(
                f"guidance.{index} (the recording) has weight 0: nothing follows the sound",
                hint="give the recording's audio guidance a non-zero weight",
            )
        targets: dict[str, torch.Tensor] = {}
        weights: dict[str, torch.Tensor] = {}
        for term in editor.guidances:
            g = term.plugin
            encoder = editor.encoders[g.space]
            with torch.no_grad():
                if term.index == index:
                    targets[term.label] = g.frame_targets(frames).to(device)
                elif segments is not None and term.index == len(config.guidance) - 1:
                    rows = g.target(encoder)
                    which = frame_segments(segments, frames, fps)
                    order = [
                        prompts.index(segments[i].prompt) if i is not None else 0 for i in which
                    ]
                    targets[term.label] = rows[torch.tensor(order)].to(device)
                    weights[term.label] = torch.tensor([float(i is not None) for i in which])
                else:
                    target = g.target(encoder)
                    if target.ndim == 2 and target.shape[0] != 1:
                        raise ConfigError(
                            f"guidance.{term.index} ({term.label}) gives {target.shape[0]} "
                            "targets: in a video, sources other than the recording are constant",
                            hint="prompts that change over time go into a [video] timeline file",
                        )
                    targets[term.label] = target.reshape(-1)
        for encoder in editor.encoders.values():
            release = getattr(encoder, "after_targets", None)
            if callable(release):
                release()
        start, before_chunk, start_files = _start(editor)
        writer = Mp4Writer(folder.folder / "video.mp4", fps, recording.path, crf=video.crf)
        if video.frames:
            (folder.folder / FRAMES_DIR).mkdir(exist_ok=True)

        def on_chunk(first: int, result: Any) -> None:
            from soundguide.core.outputs import save_png, to_pil

            images = result.edited_image
            try:
                writer.add(images)
                if video.frames:
                    for i, image in enumerate(images):
                        name = f"{first + i:05d}.png"
                        save_png(folder.folder / FRAMES_DIR / name, to_pil(image))
            except OSError as exc:
                from soundguide.core.errors import OutputError
                from soundguide.core.files import os_reason

                raise OutputError(
                    f"could not write video frames into {folder.folder}: {os_reason(exc)}",
                    hint="free some space (or fix the folder) and run again into a new --out",
                ) from None

        from soundguide.video.chunks import optimize_frames

        stop.phase = "running"
        began = time.perf_counter()
        done = optimize_frames(
            editor,
            start,
            targets,
            todo,
            chunk=video.chunk,
            overlap=video.overlap,
            weights=weights,
            on_chunk=on_chunk,
            before_chunk=before_chunk,
            stopped=stopped,
            progress=progress,
        )
        optimize_seconds = time.perf_counter() - began
    except BaseException:
        if writer is not None:
            writer.abort()
        folder.close(keep=False)
        raise
    try:
        stop.phase = "finishing"
        message = done.message
        if todo < frames and done.status == "finished":
            message += f" (a preview: the first {todo} of {frames}, max_frames)"
        result = VideoResult(
            done.status,
            message,
            frames,
            done.done,
            fps,
            seconds,
            done.latents,
            done.losses,
            optimize_seconds=optimize_seconds,
            error=done.error,
        )
        _write_outputs(
            folder.folder,
            result,
            writer,
            config,
            video,
            editor,
            done.chunks,
            device,
            start_files,
        )
    finally:
        folder.close()
    if result.error is not None:
        raise result.error
    return result


def _write_outputs(folder, result, writer, config, video, editor, chunks, device, start_files):
    from soundguide.core.errors import OutputError
    from soundguide.core.files import atomic_write_text
    from soundguide.core.outputs import file_records, finite_json, package_versions, save_tensor

    failed: dict[str, str] = {}
    try:
        path = writer.close(complete=result.ok and result.frames_done == result.frames)
        if path is not None:
            result.outputs["video.mp4"] = path
    except Exception as exc:  # noqa: BLE001 - the other outputs are still written
        failed["video.mp4"] = str(exc)
    if result.frames_done:
        try:
            result.outputs["latents.pt"] = save_tensor(folder / "latents.pt", result.latents)
        except Exception as exc:  # noqa: BLE001
            failed["latents.pt"] = str(exc)
    files = list(editor.generator.files())
    for term in [*editor.guidances, *editor.regularizers]:
        files.extend(term.plugin.files())
    files.extend(start_files)
    seconds = result.optimize_seconds
    manifest = {
        "status": result.status,
        "message": result.message,
        "frames": result.frames,
        "frames_done": result.frames_done,
        "fps": result.fps,
        "recording_seconds": result.seconds,
        "video_seconds": result.frames_done / result.fps,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": sys.argv,
        "output_dir": str(folder.resolve()),
        "device": str(device),
        "config": config.model_dump(mode="json"),
        "video": video.model_dump(mode="json"),
        "versions": package_versions(),
        "files": file_records(files),
        "seconds": seconds,
        "seconds_per_frame": seconds / result.frames_done if result.frames_done else None,
        "chunks": chunks,
        "per_frame": [{**row, "time": (row["frame"] + 0.5) / result.fps} for row in result.losses],
        "outputs": sorted(result.outputs),
        "missing": failed,
    }
    text = json.dumps(finite_json(manifest), indent=2, allow_nan=False) + "\n"
    try:
        result.outputs["run.json"] = atomic_write_text(folder / "run.json", text)
    except OSError as exc:
        failed["run.json"] = str(exc)
    if failed:
        raise OutputError(
            f"could not write {', '.join(failed)} in {folder} ({'; '.join(failed.values())})",
            hint="free some space (or fix the folder) and run again into a new --out",
        )
