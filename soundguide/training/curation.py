"""``soundguide curate``: precompute the SoundCLIP front end of a dataset into a store.

The dataset (see :mod:`soundguide.training.datasets`) is planned into shards of
``shard_size`` items in its own order. Each shard is computed by one worker
process (``workers``), which loads every clip with
:func:`~soundguide.encoders.audio.load_audio`, runs the front end's
:meth:`~soundguide.encoders.soundclip.SoundCLIPFrontend.spectrogram` and writes
the shard's array, then its JSON (the completion marker), each atomically.

Resuming: a shard whose JSON exists, was made with the same settings and lists
the same files with the same sizes and modification times is kept as is;
everything else is (re)computed. Labels and captions always come from the
current dataset listing, so editing a manifest's labels needs no recomputation
and cannot leave stale labels behind.

Every file left out is listed in ``skipped.tsv`` with a one-line reason:
missing, zero-length, corrupt and silent audio, texts CLIP cannot read (empty,
more than 77 tokens), video frames that cannot be read (the audio is kept
without its frame). No usable item at all is a :class:`DatasetError`.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import multiprocessing
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from soundguide.core.errors import ConfigError, DatasetError, OutputError, SoundguideError
from soundguide.core.files import atomic_write, atomic_write_text, sha256_file
from soundguide.training.datasets import DEFAULT_PATTERN, DatasetListing, Item, Layout, read_dataset
from soundguide.training.store import (
    INDEX_NAME,
    SHARDS_DIR,
    SKIPPED_NAME,
    STORE_DTYPE,
    STORE_FORMAT,
    STORE_VERSION,
    frontend_settings,
    write_skipped,
)
from soundguide.training.text import text_problem

DEFAULT_SHARD_SIZE = 256
DEFAULT_MAX_SECONDS = 20.0


@dataclass
class CurationReport:
    """What a curation run did."""

    out: Path
    items: int
    skipped: int
    shards: int
    shards_reused: int
    images: int
    seconds: float

    @property
    def skipped_path(self) -> Path:
        return self.out / SKIPPED_NAME

    def summary(self) -> str:
        reused = f" ({self.shards_reused} reused)" if self.shards_reused else ""
        images = f", {self.images} video frames embedded" if self.images else ""
        return (
            f"curated {self.items} clips into {self.shards} shards{reused}{images}; "
            f"skipped {self.skipped} (listed in {self.skipped_path}); {self.seconds:.1f} s"
        )


def curate(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    layout: Layout = "auto",
    pattern: str = DEFAULT_PATTERN,
    audio_dir: str | os.PathLike[str] | None = None,
    workers: int = 1,
    shard_size: int = DEFAULT_SHARD_SIZE,
    max_seconds: float = DEFAULT_MAX_SECONDS,
    clip: str = "ViT-B/32",
    images: bool = True,
    device: str | torch.device = "cpu",
    trust_checkpoint: bool = False,
    progress: bool = True,
) -> CurationReport:
    """Curate ``source`` into the store folder ``out`` (created, or resumed).

    ``clip`` (a model name or file) embeds video frames when the dataset has
    them and ``images`` is true; it is not loaded otherwise.
    """
    started = time.perf_counter()
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    if shard_size < 1:
        raise ConfigError(f"shard size must be >= 1, got {shard_size}")
    if not max_seconds > 0:
        raise ConfigError(f"max_seconds must be > 0, got {max_seconds}")
    out = Path(out).expanduser()
    _check_out(out)
    listing = read_dataset(source, layout, pattern=pattern, audio_dir=audio_dir)
    skipped = list(listing.skipped)
    items = _check_texts(listing, skipped)
    shard_dir = out / SHARDS_DIR
    shard_dir.mkdir(parents=True, exist_ok=True)
    _remove_temporaries(shard_dir)
    settings = frontend_settings(max_seconds)

    plans = [items[i : i + shard_size] for i in range(0, len(items), shard_size)]
    names = [f"{k:05d}" for k in range(len(plans))]
    _remove_stale_shards(shard_dir, len(plans))
    metas: list[dict[str, Any] | None] = [
        _finished_shard(shard_dir, name, plan, settings)
        for name, plan in zip(names, plans, strict=True)
    ]
    reused = sum(meta is not None for meta in metas)
    todo = [k for k, meta in enumerate(metas) if meta is None]
    tasks = [(str(shard_dir), names[k], [it.source for it in plans[k]], settings) for k in todo]
    with _progress(
        len(items), sum(len(plans[k]) for k in range(len(plans)) if metas[k]), progress
    ) as bar:
        for k, meta in zip(todo, _run(tasks, workers), strict=True):
            metas[k] = meta
            bar.update(len(plans[k]))

    results = [r for meta in metas for r in meta["results"]]  # type: ignore[index]
    flat = [it for plan in plans for it in plan]
    for item, result in zip(flat, results, strict=True):
        if "skipped" in result:
            skipped.append((item.source, result["skipped"]))

    image_info = None
    wants_images = images and any(
        it.image for it, r in zip(flat, results, strict=True) if "skipped" not in r
    )
    if wants_images:
        image_info = _embed_images(
            shard_dir, names, plans, metas, clip, device, trust_checkpoint, progress, skipped
        )
    index = _build_index(listing, settings, names, plans, metas, image_info)
    atomic_write_text(out / INDEX_NAME, json.dumps(index, indent=1) + "\n")
    write_skipped(out / SKIPPED_NAME, skipped)
    if not index["items"]:
        raise DatasetError(
            f"no usable audio in {listing.root}: {len(skipped)} files skipped "
            f"(reasons in {out / SKIPPED_NAME})"
        )
    return CurationReport(
        out=out,
        items=len(index["items"]),
        skipped=len(skipped),
        shards=len(plans),
        shards_reused=reused,
        images=sum(1 for record in index["items"] if record["image_row"] is not None),
        seconds=time.perf_counter() - started,
    )


# -- planning ---------------------------------------------------------------------------


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise OutputError(f"store folder is a file: {out}")
    if out.is_dir() and any(out.iterdir()):
        if not ((out / INDEX_NAME).exists() or (out / SHARDS_DIR).is_dir()):
            raise OutputError(
                f"output folder is not empty and holds no curated store: {out}",
                hint="choose an empty or new folder",
            )
        index = out / INDEX_NAME
        if index.exists():
            try:
                fmt = json.loads(index.read_text()).get("format")
            except (OSError, ValueError, AttributeError):
                fmt = None
            if fmt != STORE_FORMAT:
                raise OutputError(f"{index} exists and is not a soundguide store index")


def _check_texts(listing: DatasetListing, skipped: list[tuple[str, str]]) -> list[Item]:
    kept, problems = [], {}
    for item in listing.items:
        text = item.text
        if text not in problems:
            problems[text] = text_problem(text)
        if problems[text] is None:
            kept.append(item)
        else:
            skipped.append((item.source, problems[text]))
    return kept


def _sources(plan: Sequence[Item] | Sequence[str]) -> list[list[Any]]:
    rows = []
    for entry in plan:
        path = entry.source if isinstance(entry, Item) else entry
        try:
            stat = os.stat(path)
            rows.append([path, stat.st_size, stat.st_mtime_ns])
        except OSError:
            rows.append([path, None, None])
    return rows


def _finished_shard(
    shard_dir: Path, name: str, plan: Sequence[Item], settings: dict[str, Any]
) -> dict[str, Any] | None:
    meta_path, array_path = shard_dir / f"{name}.json", shard_dir / f"{name}.npy"
    if not (meta_path.is_file() and array_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return None
    if meta.get("settings") != settings or meta.get("sources") != _sources(plan):
        return None
    return meta


def _remove_temporaries(shard_dir: Path) -> None:
    for tmp in shard_dir.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def _remove_stale_shards(shard_dir: Path, count: int) -> None:
    for path in shard_dir.iterdir():
        stem = path.name.split(".")[0]
        if stem.isdigit() and int(stem) >= count:
            path.unlink(missing_ok=True)


# -- computing shards ----------------------------------------------------------------


def _run(tasks: list[tuple[Any, ...]], workers: int):
    """Yield each task's result in order; ``workers`` processes (1: this process)."""
    if workers == 1 or len(tasks) <= 1:
        for task in tasks:
            yield curate_shard(*task)
        return
    # spawn: forking a process that already runs torch threads can deadlock
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(
        max_workers=min(workers, len(tasks)), mp_context=context, initializer=_init_worker
    ) as pool:
        futures = [pool.submit(curate_shard, *task) for task in tasks]
        try:
            for future in futures:
                yield future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def _init_worker() -> None:
    torch.set_num_threads(1)


_FRONTEND: Any = None


def curate_shard(
    shard_dir: str, name: str, sources: list[str], settings: dict[str, Any]
) -> dict[str, Any]:
    """Compute one shard and write ``<name>.npy`` then ``<name>.json``; returns the JSON.

    Files that cannot be used (any :class:`SoundguideError` or ``OSError`` while
    loading) get ``{"skipped": reason}`` in ``results``; the others get their
    ``offset``, ``frames`` and ``sha256``.
    """
    global _FRONTEND
    from soundguide.encoders.audio import load_audio
    from soundguide.encoders.soundclip import SAMPLE_RATE, SoundCLIPFrontend

    if _FRONTEND is None:
        _FRONTEND = SoundCLIPFrontend()
    max_seconds = float(settings["max_seconds"])
    stats = _sources(sources)
    arrays, results, offset = [], [], 0
    for path in sources:
        try:
            wave = load_audio(
                path,
                SAMPLE_RATE,
                duration_seconds=max_seconds,
                max_seconds=max_seconds,
            )
            with torch.no_grad():
                spec = _FRONTEND.spectrogram(wave)[0]
            digest = sha256_file(path)
        except (SoundguideError, OSError) as exc:
            results.append({"skipped": str(exc)})
            continue
        array = spec.T.contiguous().numpy().astype(STORE_DTYPE)
        arrays.append(array)
        results.append({"offset": offset, "frames": int(array.shape[0]), "sha256": digest})
        offset += array.shape[0]
    data = np.concatenate(arrays) if arrays else np.zeros((0, settings["n_mels"]), STORE_DTYPE)
    folder = Path(shard_dir)
    atomic_write(folder / f"{name}.npy", lambda fh: np.save(fh, data))
    meta = {"settings": settings, "sources": stats, "results": results}
    atomic_write_text(folder / f"{name}.json", json.dumps(meta) + "\n")
    return meta


# -- video frames ---------------------------------------------------------------------


def clip_identity(name_or_path: str) -> str:
    """A stable name for a CLIP model: its name, or ``sha256:<hex>`` of a local file."""
    path = Path(name_or_path).expanduser()
    return f"sha256:{sha256_file(path)}" if path.is_file() else str(name_or_path)


def _embed_images(
    shard_dir: Path,
    names: list[str],
    plans: list[list[Item]],
    metas: list[dict[str, Any] | None],
    clip: str,
    device: str | torch.device,
    trust: bool,
    progress: bool,
    skipped: list[tuple[str, str]],
) -> dict[str, Any]:
    identity = clip_identity(clip)
    tag = hashlib.sha256(identity.encode()).hexdigest()[:12]
    encoder = None
    files: dict[int, str] = {}
    rows: dict[int, list[int | None]] = {}
    total = sum(1 for plan in plans for it in plan if it.image)
    with _progress(total, 0, progress, unit="frame") as bar:
        for k, (name, plan, meta) in enumerate(zip(names, plans, metas, strict=True)):
            wanted = [
                i
                for i, (it, r) in enumerate(zip(plan, meta["results"], strict=True))  # type: ignore[index]
                if it.image and "skipped" not in r
            ]
            if not wanted:
                continue
            base = f"{name}.image-{tag}"
            marker = shard_dir / f"{base}.json"
            done = _read_json(marker)
            expected = [plan[i].image for i in wanted]
            if done is None or done.get("images") != expected:
                if encoder is None:
                    encoder = _load_image_encoder(clip, device, trust)
                done = _embed_shard_images(shard_dir, base, expected, encoder)
            for path, reason in done["failed"]:
                skipped.append((path, reason))
            files[k] = f"{base}.npy"
            row_of = dict(zip(wanted, done["rows"], strict=True))
            rows[k] = [row_of.get(i) for i in range(len(plan))]
            bar.update(len(wanted))
    first = next(iter(files.values()), None)
    dim = int(np.load(shard_dir / first, mmap_mode="r").shape[1]) if first else None
    return {"identity": identity, "files": files, "rows": rows, "dim": dim}


def _load_image_encoder(clip: str, device: str | torch.device, trust: bool) -> Any:
    from soundguide.encoders.clip import load_clip

    return load_clip(clip, device=device, trust=trust)


@torch.no_grad()
def _embed_shard_images(
    shard_dir: Path, base: str, images: list[str], model: Any, batch_size: int = 32
) -> dict[str, Any]:
    from soundguide.encoders.clip import clip_preprocess

    size = int(model.visual.input_resolution)
    device = model.text_projection.device
    inputs, rows, failed = [], [], []
    for path in images:
        try:
            pixels = _read_image(path)
        except SoundguideError as exc:
            failed.append((path, f"{exc}; the audio is kept without its video frame"))
            rows.append(None)
            continue
        rows.append(len(inputs))
        inputs.append(clip_preprocess(pixels[None] * 2 - 1, size)[0])
    chunks = [
        model.encode_image(torch.stack(inputs[i : i + batch_size]).to(device)).float().cpu()
        for i in range(0, len(inputs), batch_size)
    ]
    dim = int(model.text_projection.shape[1])
    data = torch.cat(chunks).numpy() if chunks else np.zeros((0, dim), np.float32)
    atomic_write(shard_dir / f"{base}.npy", lambda fh: np.save(fh, data.astype(np.float32)))
    done = {"images": images, "rows": rows, "failed": failed}
    atomic_write_text(shard_dir / f"{base}.json", json.dumps(done) + "\n")
    return done


def _read_image(path: str) -> torch.Tensor:
    """An RGB image as (3, H, W) float32 in [0, 1]; :class:`ImageError` if unreadable."""
    from PIL import Image, UnidentifiedImageError

    from soundguide.core.errors import ImageError

    try:
        with Image.open(path) as image:
            rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise ImageError(f"cannot read image {path}: {' '.join(str(exc).split())}") from None
    return torch.from_numpy(rgb).permute(2, 0, 1).contiguous()


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


# -- the index ------------------------------------------------------------------------


def _build_index(
    listing: DatasetListing,
    settings: dict[str, Any],
    names: list[str],
    plans: list[list[Item]],
    metas: list[dict[str, Any] | None],
    image_info: dict[str, Any] | None,
) -> dict[str, Any]:
    records, shards = [], []
    for k, (name, plan, meta) in enumerate(zip(names, plans, metas, strict=True)):
        image_rows = (image_info or {}).get("rows", {}).get(k)
        count = 0
        for i, (item, result) in enumerate(zip(plan, meta["results"], strict=True)):  # type: ignore[index]
            if "skipped" in result:
                continue
            count += 1
            records.append(
                {
                    "shard": k,
                    "offset": result["offset"],
                    "frames": result["frames"],
                    "source": item.source,
                    "sha256": result["sha256"],
                    "label": item.label,
                    "caption": item.caption,
                    "split": item.split,
                    "image": item.image,
                    "image_row": image_rows[i] if image_rows is not None else None,
                }
            )
        shards.append({"name": name, "items": count})
    return {
        "format": STORE_FORMAT,
        "version": STORE_VERSION,
        "dataset": {"root": str(listing.root), "layout": listing.layout},
        "frontend": settings,
        "image_encoder": image_info["identity"] if image_info else None,
        "image_dim": image_info["dim"] if image_info else None,
        "image_files": {str(k): v for k, v in image_info["files"].items()} if image_info else {},
        "shards": shards,
        "items": records,
    }


class _progress:
    """A tqdm bar (disabled when ``enabled`` is false) used as a context manager."""

    def __init__(self, total: int, initial: int, enabled: bool, unit: str = "clip") -> None:
        from soundguide.core.progress import progress_bar

        self._bar = progress_bar(
            total=total,
            initial=initial,
            unit=unit,
            enabled=enabled,
            desc="curating",
            leave=False,
        )

    def __enter__(self) -> Any:
        return self._bar

    def __exit__(self, *exc: object) -> None:
        self._bar.close()
