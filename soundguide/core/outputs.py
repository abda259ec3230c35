"""Writing a run's outputs: images, grids, latents, the GIF and ``run.json``.

Layout of an output folder::

    source.png          the source image(s) (a column for a batch)
    edited.png          the edited image(s)
    comparison.png      source | edited, one row per batch item
    latent_source.pt    (n, L, D) float tensor, torch.load(weights_only=True)
    latent_edited.pt    (n, L, D)
    run.json            resolved config, seeds, versions, files + sha256, losses, timings
    steps/NNNNN.pt|png  every ``save_every`` updates (NNNNN = updates done)
    trajectory.gif      optional

Every file is written to a temporary name and renamed, so a crash or Ctrl-C
never leaves a half-written file under a final name.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import os
import platform
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from soundguide.core.errors import OutputError
from soundguide.core.files import atomic_write, atomic_write_text, sha256_file

OUTPUT_FILES = (
    "source.png",
    "edited.png",
    "comparison.png",
    "latent_source.pt",
    "latent_edited.pt",
    "run.json",
    "trajectory.gif",
)
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


class RunWriter:
    """Owns an output folder: refuses a non-empty one unless ``overwrite``."""

    def __init__(self, folder: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        self.folder = Path(folder)
        self.overwrite = overwrite

    def claim(self) -> None:
        """Create the folder, or check that it may be written to (call before a long run)."""
        folder = self.folder
        if folder.exists() and not folder.is_dir():
            raise OutputError(f"output path exists and is not a folder: {folder}")
        if folder.is_dir() and any(folder.iterdir()):
            if not self.overwrite:
                raise OutputError(
                    f"output folder is not empty: {folder}",
                    hint="pass --overwrite to replace its outputs, or choose another --out",
                )
            # stale step files from an earlier run must not mix with this run's
            shutil.rmtree(folder / "steps", ignore_errors=True)
            for name in OUTPUT_FILES:
                (folder / name).unlink(missing_ok=True)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create output folder {folder}: {exc}") from None

    def step_writer(self, save_every: int, gif: bool, steps: int) -> StepWriter:
        return StepWriter(self.folder, save_every=save_every, gif=gif, steps=steps)

    def write_result(
        self,
        result: Any,
        config: Any,
        *,
        device: str,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Path]:
        """Write the images, latents and run.json of a finished (or stopped) run."""
        f = self.folder
        written = {
            "source.png": save_png(f / "source.png", batch_column(result.source_image)),
            "edited.png": save_png(f / "edited.png", batch_column(result.edited_image)),
            "comparison.png": save_png(
                f / "comparison.png",
                grid(
                    [[s, e] for s, e in zip(result.source_image, result.edited_image, strict=True)]
                ),
            ),
            "latent_source.pt": save_tensor(f / "latent_source.pt", result.source_latent),
            "latent_edited.pt": save_tensor(f / "latent_edited.pt", result.edited_latent),
        }
        seconds = result.step_seconds
        manifest = {
            "status": result.status,
            "message": result.message,
            "steps_done": result.steps_done,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "command": sys.argv,
            "device": device,
            "seeds": result.seeds,
            "config": config.model_dump(mode="json"),
            "versions": package_versions(),
            "files": file_records(result.files),
            "seconds_per_step": (sum(seconds) / len(seconds)) if seconds else None,
            "step_seconds": seconds,
            "losses": result.history,
            **(extra or {}),
        }
        written["run.json"] = atomic_write_text(
            f / "run.json", json.dumps(manifest, indent=2) + "\n"
        )
        return written


class StepWriter:
    """Step-event subscriber: ``steps/NNNNN.pt`` and ``.png`` every ``save_every`` updates,
    and the frames of ``trajectory.gif``."""

    def __init__(
        self, folder: Path, *, save_every: int, gif: bool, steps: int, max_frame: int = 256
    ):
        self.folder = folder
        self.save_every = save_every
        self.gif = gif
        self.frame_every = save_every if save_every > 0 else max(1, steps // 50)
        self.max_frame = max_frame
        self.frames: list[Image.Image] = []

    def __call__(self, event: Any) -> None:
        if self.save_every > 0 and (event.step % self.save_every == 0 or event.final):
            name = f"{event.step:05d}"
            save_tensor(self.folder / "steps" / f"{name}.pt", event.latent)
            save_png(self.folder / "steps" / f"{name}.png", batch_column(event.image))
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
