"""``soundguide curate``: precompute the SoundCLIP front end of a dataset into a store.

The dataset (see :mod:`soundguide.training.datasets`) is split into shards, each
computed by one worker process (``workers``), which loads every clip with
:func:`~soundguide.encoders.audio.load_audio`, runs the front end's
:meth:`~soundguide.encoders.soundclip.SoundCLIPFrontend.spectrogram` and writes
the shard's array, then its JSON (the completion marker), each atomically.

Clip keys: a clip is known by its path relative to the dataset root, both
with every symlink resolved (``os.path.realpath``; a file outside the root
gets a ``../`` path). So the same folder given relative, absolute or through
a symlink yields the same keys, and so does the whole folder moved or renamed
(``mv`` and ``rsync -a`` keep modification times). A file listed twice is
computed once.

Shards: the leaves of a binary trie over the bits of ``sha256(key)``: a node
is split in two while it holds more than ``max_clips_per_shard(shard_size)``
= ``round(2 ln 2 * shard_size)`` clips, and shard ``h0110`` holds the clips
whose hash starts with the bits 0110. The layout depends on nothing but the
set of keys, and a key's shard depends on nothing but the key and the clips
sharing its hash prefix, so adding, removing or changing one file changes the
one shard it falls in; once in a while that shard splits in two (an
addition) or merges with its sibling (a removal), and only its clips, or its
sibling's, are computed again. No shard holds more than
``round(1.39 * shard_size)`` clips. As a dataset grows the leaves split about
together, so the typical shard size swings between ``0.69 * shard_size`` and
``1.39 * shard_size`` and averages ``shard_size`` over dataset sizes; within
one dataset, shard sizes vary by about the square root of the size (binomial
noise of the hash).

Resuming: a shard whose JSON exists, was made with the same settings and
lists the same keys with the same sizes and modification times (one
``stat`` per file; hashing every file's content would read the whole dataset
at every resume) is kept as is; everything else is (re)computed, and shard
files no longer in the layout are removed (those of stores written before
this layout are named ``00000`` ...: their clips are computed again once).
Before it changes any shard the run removes ``index.json`` and writes it again
last, so an index on disk always matches the shards. Labels and captions
always come from the current dataset listing, so editing a manifest's labels
needs no recomputation and cannot leave stale labels behind.

Every file left out is listed in ``skipped.tsv`` with a one-line reason:
missing, zero-length, corrupt and silent audio, texts CLIP cannot read (empty,
more than 77 tokens), video frames that cannot be read (the audio is kept
without its frame). No usable item at all is a :class:`DatasetError`.
"""

from __future__ import annotations

import bisect
import concurrent.futures
import hashlib
import json
import math
import multiprocessing
import os
import re
import time
from collections.abc import Iterable
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
HASH_BITS = 256
SHARD_PREFIX = "h"
# shard files: h<bits> (this layout) or digits (stores written before it), then .npy/.json/...
_SHARD_STEM = re.compile(rf"{SHARD_PREFIX}[01]*|\d+")


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
    computed: int = 0
    """Clips whose spectrogram this run computed (those of the shards not reused)."""

    @property
    def skipped_path(self) -> Path:
        return self.out / SKIPPED_NAME

    def summary(self) -> str:
        reused = (
            f" ({self.shards_reused} reused, {self.computed} clips computed)"
            if self.shards_reused
            else ""
        )
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

    keys = ClipKeys(listing.root)
    item_keys = [keys(item.source) for item in items]
    paths = dict(item_keys)  # key -> resolved path
    plan = plan_shards(paths, max_clips_per_shard(shard_size))
    names = list(plan)
    clips = {name: [[key, *_stat(paths[key])] for key in plan[name]] for name in names}
    metas: dict[str, dict[str, Any] | None] = {
        name: _finished_shard(shard_dir, name, clips[name], settings) for name in names
    }
    todo = [name for name in names if metas[name] is None]
    stale = _stale_files(shard_dir, plan)
    if todo or stale:
        (out / INDEX_NAME).unlink(missing_ok=True)
    for path in stale:
        path.unlink(missing_ok=True)
    tasks = [
        (str(shard_dir), name, plan[name], [paths[key] for key in plan[name]], settings)
        for name in todo
    ]
    computed = sum(len(plan[name]) for name in todo)
    with _progress(len(paths), len(paths) - computed, progress) as bar:
        for name, meta in zip(todo, _run(tasks, workers), strict=True):
            metas[name] = meta
            bar.update(len(plan[name]))

    shard_of = {key: name for name in names for key in plan[name]}
    result_of = {
        key: result
        for name in names
        for key, result in zip(plan[name], metas[name]["results"], strict=True)  # type: ignore[index]
    }
    results = [result_of[key] for key, _ in item_keys]
    for item, result in zip(items, results, strict=True):
        if "skipped" in result:
            skipped.append((item.source, result["skipped"]))

    image_info = None
    wanted = [
        item.image is not None and "skipped" not in result
        for item, result in zip(items, results, strict=True)
    ]
    if images and any(wanted):
        members: dict[str, list[int]] = {name: [] for name in names}
        for i, (key, _) in enumerate(item_keys):
            if wanted[i]:
                members[shard_of[key]].append(i)
        image_info = _embed_images(
            out, names, members, items, keys, clip, device, trust_checkpoint, progress, skipped
        )
    index = _build_index(
        listing, keys.root, settings, names, shard_of, items, item_keys, results, image_info
    )
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
        shards=len(names),
        shards_reused=len(names) - len(todo),
        images=sum(1 for record in index["items"] if record["image_row"] is not None),
        seconds=time.perf_counter() - started,
        computed=computed,
    )


# -- planning ---------------------------------------------------------------------------


class ClipKeys:
    """Stable names for a dataset's files: ``keys(path) -> (key, resolved path)``.

    The key is the file's path relative to the dataset root, both resolved
    (every symlink followed), with ``/`` separators; a file outside the root
    gets a ``../`` path (its resolved path when no relative one exists). Given
    the root relative, absolute or through a symlink, or moved as a whole, a
    file keeps its key.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = os.path.realpath(root)
        self._prefix = os.path.join(self.root, "")
        self._cwd = os.getcwd()
        self._dirs: dict[str, str] = {}

    def __call__(self, path: str | os.PathLike[str]) -> tuple[str, str]:
        full = os.path.join(self._cwd, path)  # unchanged when ``path`` is absolute
        folder, name = os.path.split(full)
        # realpath walks every component: resolve each folder once, then only the name
        real_folder = self._dirs.get(folder)
        if real_folder is None:
            real_folder = self._dirs[folder] = os.path.realpath(folder)
        real = os.path.join(real_folder, name)
        if os.path.islink(real):
            real = os.path.realpath(real)
        if real.startswith(self._prefix):
            key = real[len(self._prefix) :]
        else:
            try:
                key = os.path.relpath(real, self.root)
            except ValueError:  # another drive (Windows)
                key = real
        return key.replace(os.sep, "/"), real


def max_clips_per_shard(shard_size: int) -> int:
    """The most clips a shard holds, so that shards average ``shard_size`` clips.

    The trie's leaves hold between half of this and all of it, about
    log-uniformly over dataset sizes, so their mean is this / (2 ln 2).
    """
    return max(1, round(2 * math.log(2) * shard_size))


def key_hash(key: str) -> int:
    """The :data:`HASH_BITS`-bit number whose leading bits choose a clip's shard."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest(), "big")


def plan_shards(keys: Iterable[str], max_clips: int) -> dict[str, list[str]]:
    """Group clip keys into shards: ``{name: sorted keys}``, in hash order.

    The shards are the leaves of the binary trie of the keys' :func:`key_hash`
    bits, a node split in two while it holds more than ``max_clips`` keys;
    a leaf is named ``h`` plus its bit prefix (``h`` alone: every key in one
    shard). Empty leaves are left out; duplicate keys count once.
    """
    if max_clips < 1:
        raise ConfigError(f"max_clips must be >= 1, got {max_clips}")
    hashed = sorted((key_hash(key), key) for key in set(keys))
    values = [value for value, _ in hashed]
    shards: dict[str, list[str]] = {}

    def visit(lo: int, hi: int, prefix: int, depth: int) -> None:
        if hi - lo <= max_clips or depth == HASH_BITS:
            if hi > lo:
                bits = format(prefix, f"0{depth}b") if depth else ""
                shards[SHARD_PREFIX + bits] = sorted(key for _, key in hashed[lo:hi])
            return
        middle = bisect.bisect_left(values, (2 * prefix + 1) << (HASH_BITS - depth - 1), lo, hi)
        visit(lo, middle, 2 * prefix, depth + 1)
        visit(middle, hi, 2 * prefix + 1, depth + 1)

    visit(0, len(hashed), 0, 0)
    return shards


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


def _stat(path: str) -> list[int | None]:
    """``[size, mtime_ns]`` of a file, ``[None, None]`` when it cannot be read."""
    try:
        stat = os.stat(path)
    except OSError:
        return [None, None]
    return [stat.st_size, stat.st_mtime_ns]


def _finished_shard(
    shard_dir: Path, name: str, clips: list[list[Any]], settings: dict[str, Any]
) -> dict[str, Any] | None:
    """The shard's JSON when it was made from ``clips`` (``[key, size, mtime_ns]``)."""
    if not (shard_dir / f"{name}.npy").is_file():
        return None
    meta = _read_json(shard_dir / f"{name}.json")
    if meta is None or meta.get("settings") != settings or meta.get("clips") != clips:
        return None
    return meta if len(meta.get("results", ())) == len(clips) else None


def _stale_files(shard_dir: Path, names: Iterable[str]) -> list[Path]:
    """Files of shards not in ``names`` (this layout's or the digit-named ones of before)."""
    keep = set(names)
    return [
        path
        for path in shard_dir.iterdir()
        if _SHARD_STEM.fullmatch(stem := path.name.split(".")[0]) and stem not in keep
    ]


def _remove_temporaries(shard_dir: Path) -> None:
    for tmp in shard_dir.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


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
    shard_dir: str, name: str, keys: list[str], paths: list[str], settings: dict[str, Any]
) -> dict[str, Any]:
    """Compute one shard and write ``<name>.npy`` then ``<name>.json``; returns the JSON.

    ``keys`` name the clips (see :class:`ClipKeys`), ``paths`` are their files.
    The JSON's ``clips`` are ``[key, size, mtime_ns]``, taken before each file
    is read (a file changed meanwhile is computed again at the next run).
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
    clips = [[key, *_stat(path)] for key, path in zip(keys, paths, strict=True)]
    arrays, results, offset = [], [], 0
    for path in paths:
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
    meta = {"settings": settings, "clips": clips, "results": results}
    atomic_write_text(folder / f"{name}.json", json.dumps(meta) + "\n")
    return meta


# -- video frames ---------------------------------------------------------------------


def clip_identity(name_or_path: str) -> str:
    """A stable name for a CLIP model: its name, or ``sha256:<hex>`` of a local file."""
    path = Path(name_or_path).expanduser()
    return f"sha256:{sha256_file(path)}" if path.is_file() else str(name_or_path)


def _embed_images(
    out: Path,
    names: list[str],
    members: dict[str, list[int]],
    items: list[Item],
    keys: ClipKeys,
    clip: str,
    device: str | torch.device,
    trust: bool,
    progress: bool,
    skipped: list[tuple[str, str]],
) -> dict[str, Any]:
    """Embed the video frames of ``items[i]`` for the ``members`` of every shard.

    Per shard, each distinct frame (by key) is embedded once, into
    ``<shard>.image-<encoder>.npy``; its JSON lists ``[key, size, mtime_ns]``
    of those frames, so a shard whose frames are unchanged is not embedded
    again. Returns ``rows`` (the row of every item, or None), ``files``
    (per shard name), ``identity`` and ``dim``.
    """
    shard_dir = out / SHARDS_DIR
    identity = clip_identity(clip)
    tag = hashlib.sha256(identity.encode()).hexdigest()[:12]
    encoder = None
    files: dict[str, str] = {}
    rows: list[int | None] = [None] * len(items)
    with _progress(sum(map(len, members.values())), 0, progress, unit="frame") as bar:
        for name in names:
            if not members[name]:
                continue
            frames: dict[str, tuple[str, str]] = {}  # key -> (path as listed, resolved path)
            key_of = {}
            for i in members[name]:
                key, path = keys(items[i].image)  # type: ignore[arg-type]
                frames.setdefault(key, (items[i].image, path))  # type: ignore[arg-type]
                key_of[i] = key
            order = sorted(frames)
            expected = [[key, *_stat(frames[key][1])] for key in order]
            base = f"{name}.image-{tag}"
            done = _read_json(shard_dir / f"{base}.json")
            if (
                done is None
                or done.get("images") != expected
                or not (shard_dir / f"{base}.npy").is_file()
            ):
                if encoder is None:
                    encoder = _load_image_encoder(clip, device, trust)
                (out / INDEX_NAME).unlink(missing_ok=True)
                paths = [frames[key][1] for key in order]
                done = _embed_shard_images(shard_dir, base, expected, paths, encoder)
            for key, reason in done["failed"]:
                skipped.append((frames[key][0], reason))
            files[name] = f"{base}.npy"
            row_of = dict(zip(order, done["rows"], strict=True))
            for i in members[name]:
                rows[i] = row_of[key_of[i]]
            bar.update(len(members[name]))
    first = next(iter(files.values()), None)
    dim = int(np.load(shard_dir / first, mmap_mode="r").shape[1]) if first else None
    return {"identity": identity, "files": files, "rows": rows, "dim": dim}


def _load_image_encoder(clip: str, device: str | torch.device, trust: bool) -> Any:
    from soundguide.encoders.clip import load_clip

    return load_clip(clip, device=device, trust=trust)


@torch.no_grad()
def _embed_shard_images(
    shard_dir: Path,
    base: str,
    images: list[list[Any]],
    paths: list[str],
    model: Any,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Embed ``paths`` into ``<base>.npy``; ``<base>.json`` records ``images`` (their
    ``[key, size, mtime_ns]``), each one's row (None: unreadable) and the failures."""
    from soundguide.encoders.clip import clip_preprocess

    size = int(model.visual.input_resolution)
    device = model.text_projection.device
    inputs, rows, failed = [], [], []
    for (key, *_), path in zip(images, paths, strict=True):
        try:
            pixels = _read_image(path)
        except SoundguideError as exc:
            failed.append((key, f"{exc}; the audio is kept without its video frame"))
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
    resolved_root: str,
    settings: dict[str, Any],
    names: list[str],
    shard_of: dict[str, str],
    items: list[Item],
    item_keys: list[tuple[str, str]],
    results: list[dict[str, Any]],
    image_info: dict[str, Any] | None,
) -> dict[str, Any]:
    """The index: the usable items in the listing's order, each pointing into its shard."""
    position = {name: k for k, name in enumerate(names)}
    image_rows = image_info["rows"] if image_info else [None] * len(items)
    counts = dict.fromkeys(names, 0)
    for key, result in {key: r for (key, _), r in zip(item_keys, results, strict=True)}.items():
        if "skipped" not in result:
            counts[shard_of[key]] += 1
    records = [
        {
            "shard": position[shard_of[key]],
            "offset": result["offset"],
            "frames": result["frames"],
            "source": item.source,
            "sha256": result["sha256"],
            "label": item.label,
            "caption": item.caption,
            "split": item.split,
            "image": item.image,
            "image_row": row,
        }
        for item, (key, _), result, row in zip(items, item_keys, results, image_rows, strict=True)
        if "skipped" not in result
    ]
    return {
        "format": STORE_FORMAT,
        "version": STORE_VERSION,
        "dataset": {
            "root": str(listing.root),
            "resolved_root": resolved_root,
            "layout": listing.layout,
        },
        "frontend": settings,
        "image_encoder": image_info["identity"] if image_info else None,
        "image_dim": image_info["dim"] if image_info else None,
        "image_files": {
            str(position[name]): file for name, file in (image_info or {}).get("files", {}).items()
        },
        "shards": [{"name": name, "items": counts[name]} for name in names],
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
