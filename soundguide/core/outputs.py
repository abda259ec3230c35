"""Writing a run's outputs: images, grids, latents, the loss log, the GIF and ``run.json``.

Layout of an output folder::

    photo.png           the photo(s) a run started from, aligned or cropped (optimization.image)
    source.png          the source image(s) (a column for a batch); for a photo, its reconstruction
    edited.png          the edited image(s)
    comparison.png      [photo |] source | edited, one row per batch item
    latent_source.pt    (n, L, D) float tensor, torch.load(weights_only=True)
    latent_edited.pt    (n, L, D)
    losses.csv          one row per step and batch item: step, item, lr, total, each term
    run.json            status, resolved config, seeds, versions, files + sha256, final losses
    steps/NNNNN.pt|png  every ``save_every`` updates (NNNNN = updates done)
    trajectory.gif      optional

Every file but the loss log is written to a temporary name and renamed, so a
crash or Ctrl-C never leaves a half-written file under a final name;
``losses.csv`` is appended to step by step and holds complete rows up to the
last step logged. ``run.json`` is written last: a folder whose ``run.json``
exists holds a complete run (whatever its status).

A write that fails (a full disk) never loses what was already written:
:meth:`RunWriter.write_result` tries every file, then raises one
:class:`OutputError` naming the files that are missing.
"""

from __future__ import annotations

import csv
import datetime as _dt
import importlib.metadata
import json
import math
import os
import platform
import sys
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from soundguide.core.errors import OutputError
from soundguide.core.files import atomic_write, atomic_write_text, os_reason, sha256_file
from soundguide.core.runfolder import STEPS_DIR

VERSIONED_PACKAGES = (
    "soundguide",
    "torch",
    "torchvision",
    "torchaudio",
    "clip-anytorch",
    "kornia",
    "pluggy",
    "pydantic",
    "numpy",
    "soundfile",
)


def save_tensor(path: str | os.PathLike[str], tensor: torch.Tensor) -> Path:
    """A plain CPU tensor that ``torch.load(weights_only=True)`` reads."""
    data = tensor.detach().to("cpu").contiguous().clone()
    return atomic_write(path, lambda fh: torch.save(data, fh))


# -- images -----------------------------------------------------------------------


def to_pil(image: torch.Tensor) -> Image.Image:
    """One image (3, H, W) roughly in [-1, 1] -> an 8-bit RGB picture (values clamped)."""
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected an image (3, H, W), got {tuple(image.shape)}")
    if not torch.isfinite(image).all():
        raise OutputError("refusing to write an image with NaN or infinite values")
    array = ((image.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return Image.fromarray(array.permute(1, 2, 0).numpy(), mode="RGB")


def grid(rows: list[list[torch.Tensor]], *, pad: int = 2) -> Image.Image:
    """Images (3, H, W) laid out in rows and columns, with white padding."""
    tiles = [[to_pil(image) for image in row] for row in rows]
    h = max(t.height for row in tiles for t in row)
    w = max(t.width for row in tiles for t in row)
    cols = max(len(row) for row in tiles)
    canvas = Image.new(
        "RGB", (cols * w + (cols - 1) * pad, len(tiles) * h + (len(tiles) - 1) * pad), "white"
    )
    for r, row in enumerate(tiles):
        for c, tile in enumerate(row):
            canvas.paste(tile, (c * (w + pad), r * (h + pad)))
    return canvas


def batch_column(images: torch.Tensor) -> Image.Image:
    """A batch (n, 3, H, W) as one picture: the image itself for n = 1, else a column."""
    return grid([[image] for image in images])


def save_png(path: str | os.PathLike[str], picture: Image.Image) -> Path:
    return atomic_write(path, lambda fh: picture.save(fh, format="PNG"))


# -- run manifest -----------------------------------------------------------------


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def file_records(paths: list[Path]) -> list[dict[str, Any]]:
    seen: set[Path] = set()
    records = []
    for path in paths:
        path = Path(path).resolve()
        if path in seen:
            continue
        seen.add(path)
        digest = sha256_file(path) if path.is_file() else None
        records.append({"path": str(path), "sha256": digest})
    return records


def finite_json(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by None (``run.json`` is strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_json(v) for v in value]
    return value


class RunWriter:
    """Writes a run's results into its folder (opened by a
    :class:`~soundguide.core.runfolder.RunFolder` for this run)."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)

    def write_result(
        self,
        result: Any,
        config: Any,
        *,
        device: str,
        extra: dict[str, Any] | None = None,
        recorders: tuple[Any, ...] = (),
    ) -> dict[str, Path]:
        """Write the latents, images and ``run.json`` of a finished (or stopped) run.

        ``recorders`` (a :class:`StepWriter`, a :class:`LossLog`) are finished
        here and their failures reported with the rest. Every file is tried,
        the most valuable first; ``run.json`` comes last and lists what is
        missing. Raises :class:`OutputError` naming the missing files when any
        write failed (during the run or now).
        """
        f = self.folder
        jobs: list[tuple[str, Any]] = [
            ("latent_edited.pt", lambda: save_tensor(f / "latent_edited.pt", result.edited_latent)),
            ("latent_source.pt", lambda: save_tensor(f / "latent_source.pt", result.source_latent)),
        ]
        jobs.append(
            ("source.png", lambda: save_png(f / "source.png", batch_column(result.source_image)))
        )
        photo = getattr(result, "photo", None)
        if photo is not None:
            jobs.append(("photo.png", lambda: save_png(f / "photo.png", batch_column(photo))))
        if result.edited_image is not None:  # None: a failed run could not render its latent
            jobs += [
                (
                    "edited.png",
                    lambda: save_png(f / "edited.png", batch_column(result.edited_image)),
                ),
                (
                    "comparison.png",
                    lambda: save_png(
                        f / "comparison.png",
                        grid(_comparison_rows(photo, result.source_image, result.edited_image)),
                    ),
                ),
            ]
        written: dict[str, Path] = {}
        failed: dict[str, str] = {}
        for recorder in recorders:
            path = _attempt(recorder.finish, failed, getattr(recorder, "name", "outputs"))
            if path is not None:
                written[path.name] = path
        for name, job in jobs:
            path = _attempt(job, failed, name)
            if path is not None:
                written[name] = path
        for recorder in recorders:
            failed.update(recorder.failures)
        manifest = self.manifest(result, config, device=device, extra=extra, missing=failed)
        text = json.dumps(finite_json(manifest), indent=2, allow_nan=False) + "\n"
        path = _attempt(lambda: atomic_write_text(f / "run.json", text), failed, "run.json")
        if path is not None:
            written["run.json"] = path
        if failed:
            kept = ", ".join(sorted(written)) or "nothing"
            reasons = sorted(set(failed.values()))
            raise OutputError(
                f"could not write {', '.join(failed)} in {f} ({'; '.join(reasons)}); kept: {kept}",
                hint="free some space (or fix the folder) and run again into a new --out",
            )
        return written

    def manifest(
        self,
        result: Any,
        config: Any,
        *,
        device: str,
        extra: dict[str, Any] | None = None,
        missing: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """What ``run.json`` holds: small whatever the number of steps (per-step
        losses are in ``losses.csv``)."""
        seconds = result.step_seconds
        resolved = config.model_dump(mode="json")
        resolved.setdefault("output", {})["dir"] = str(self.folder.resolve())
        history = result.history
        return {
            "status": result.status,
            "message": result.message,
            "steps_done": result.steps_done,
            "edited_step": result.edited_step,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "command": sys.argv,
            "output_dir": str(self.folder.resolve()),
            "device": device,
            "seeds": result.seeds,
            "config": resolved,
            "versions": package_versions(),
            "files": file_records(result.files),
            "seconds_per_step": (sum(seconds) / len(seconds)) if seconds else None,
            "seconds": sum(seconds),
            "losses": {
                "first": history[0] if history else None,
                "final": result.final_losses,
                "log": "losses.csv",
            },
            **({"photos": result.photos} if getattr(result, "photos", None) else {}),
            "missing": dict(missing or {}),
            **(extra or {}),
        }


def _comparison_rows(
    photo: torch.Tensor | None, source: torch.Tensor, edited: torch.Tensor
) -> list[list[torch.Tensor]]:
    """One row per item: [photo,] source, edited."""
    columns = [source, edited] if photo is None else [photo, source, edited]
    return [list(row) for row in zip(*columns, strict=True)]


def _attempt(job: Any, failed: dict[str, str], name: str) -> Path | None:
    try:
        return job()
    except OSError as exc:
        failed[name] = os_reason(exc)
        return None


class StepWriter:
    """Step-event subscriber: ``steps/NNNNN.pt`` and ``.png`` every ``save_every`` updates,
    and the frames of ``trajectory.gif`` (written by :meth:`finish`).

    A write that fails stops the saving, records the file under :attr:`failures`
    and calls ``on_error(message)`` (the edit uses it to stop the run between
    two steps, so the final outputs are written while there is room).
    """

    name = "trajectory.gif"

    def __init__(
        self,
        folder: Path,
        *,
        save_every: int,
        gif: bool,
        steps: int,
        max_frame: int = 256,
        on_error: Any = None,
    ):
        self.folder = Path(folder)
        self.save_every = save_every
        self.gif = gif
        self.frame_every = save_every if save_every > 0 else max(1, steps // 50)
        self.max_frame = max_frame
        self.frames: list[Image.Image] = []
        self.failures: dict[str, str] = {}
        self.on_error = on_error

    def __call__(self, event: Any) -> None:
        if (
            self.save_every > 0
            and not self.failures
            and (event.step % self.save_every == 0 or event.final)
        ):
            name = f"{STEPS_DIR}/{event.step:05d}"
            try:
                save_tensor(self.folder / f"{name}.pt", event.latent)
                save_png(self.folder / f"{name}.png", batch_column(event.image))
            except OSError as exc:
                self.failures[f"{name}.pt|png and later steps"] = os_reason(exc)
                if self.on_error is not None:
                    self.on_error(f"could not write {name}.png in {self.folder}: {os_reason(exc)}")
        if self.gif and (event.step % self.frame_every == 0 or event.final):
            frame = batch_column(event.image)
            frame.thumbnail((self.max_frame, self.max_frame * len(event.image)))
            self.frames.append(frame)

    def finish(self) -> Path | None:
        if not self.gif or not self.frames:
            return None
        first, *rest = self.frames
        return atomic_write(
            self.folder / "trajectory.gif",
            lambda fh: first.save(
                fh, format="GIF", save_all=True, append_images=rest, duration=80, loop=0
            ),
        )


class LossLog:
    """Step-event subscriber appending ``losses.csv``: one row per step and batch item.

    Columns: ``step`` (updates done), ``item``, ``lr`` (of the update about to
    happen; empty for the final row), ``total``, then one column per weighted
    term. Rows are flushed every step, so a stopped run keeps its log.
    """

    name = "losses.csv"

    def __init__(self, path: Path, *, on_error: Any = None) -> None:
        self.path = Path(path)
        self.on_error = on_error
        self.failures: dict[str, str] = {}
        self._fh: Any = None
        self._writer: Any = None
        self._columns: list[str] = []

    def __call__(self, event: Any) -> None:
        if self.failures:
            return
        values = {k: v.detach().float().cpu().tolist() for k, v in event.losses.items()}
        lr = "" if event.lr is None else repr(float(event.lr))
        try:
            if self._fh is None:
                self._fh = open(self.path, "w", encoding="utf-8", newline="")  # noqa: SIM115
                self._writer = csv.writer(self._fh)
                self._columns = [k for k in values if k != "total"]
                self._writer.writerow(["step", "item", "lr", "total", *self._columns])
            for i, total in enumerate(values["total"]):
                self._writer.writerow(
                    [
                        event.step,
                        i,
                        lr,
                        _number(total),
                        *(_number(values[k][i]) for k in self._columns),
                    ]
                )
            self._fh.flush()
        except OSError as exc:
            self.failures[f"losses.csv (from step {event.step})"] = os_reason(exc)
            self._close()
            if self.on_error is not None:
                self.on_error(f"could not write {self.path}: {os_reason(exc)}")

    def finish(self) -> Path | None:
        self._close()
        return self.path if self.path.exists() and not self.failures else None

    def _close(self) -> None:
        if self._fh is not None:
            try:
                self._fh.close()
            except OSError:
                pass
            self._fh = None


def _number(value: float) -> str:
    return repr(float(value))
