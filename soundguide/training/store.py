"""The curated store: precomputed SoundCLIP spectrograms in shards, and its reader.

What the store holds, and why: the output of the front end's steps 1-3 (the
normalized log-mel spectrogram of the whole clip, values in [0, 1], dB reference
= the clip's loudest bin) *before* the 864-frame crop and the resize to
(1, 128, 512). Two reasons:

- the original training picked a random 864-frame crop of every clip each time;
  keeping the uncropped spectrogram keeps that augmentation;
- SpecAugment must mask mel bands and time frames, which only exist before the
  resize and reshape (the (1, 128, 512) input interleaves 4 mel rows per row).

Crop, SpecAugment and the resize (steps 4-5) are cheap and run in the data
loader (:mod:`soundguide.training.data`). Values are stored as float16: in
[0, 1] its rounding error is at most 2**-12 (0.02 dB on the 80 dB scale), far
below anything training notices, and it halves the size. A 10 s clip takes
862 frames x 128 bands x 2 bytes = 220 KB. Clips are cut to ``max_seconds``
(default 20 s) before the front end.

Layout of a store folder::

    index.json             format, front-end settings, the dataset root (as given and
                           resolved), labels, every item in the dataset's order
    skipped.tsv            path <TAB> one-line reason, for every file left out
    shards/h0110.npy       (frames, 128) float16: the spectrograms of the clips whose
                           key hashes to the bits 0110, time-major, concatenated
                           (item i = rows offset_i ... offset_i + frames_i)
    shards/h0110.json      the shard's clips ([key, size, mtime_ns]) and results;
                           written last (completion marker)
    shards/h0110.image-<encoder>.npy / .json   CLIP embeddings of the video frames (optional)

How clips are keyed and sharded, and when a shard is reused, is
:mod:`soundguide.training.curation`'s business; a reader needs only the index,
whose items name their shard by its position in ``shards``. Stores written
before this shard layout (shards ``00000``, ``00001``...) read the same way.

Every file is written atomically (temporary file + rename), so an interrupted
run never leaves a corrupt shard under its final name.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from soundguide.core.errors import DatasetError
from soundguide.encoders.soundclip import HOP_LENGTH, N_FFT, N_MELS, NUM_FRAMES, SAMPLE_RATE

STORE_FORMAT = "soundguide-store"
STORE_VERSION = 1
INDEX_NAME = "index.json"
SKIPPED_NAME = "skipped.tsv"
SHARDS_DIR = "shards"
STORE_DTYPE = np.float16


def frontend_settings(max_seconds: float) -> dict[str, Any]:
    """What the stored arrays depend on; a shard made with other settings is recomputed."""
    return {
        "store_version": STORE_VERSION,
        "sample_rate": SAMPLE_RATE,
        "n_fft": N_FFT,
        "hop_length": HOP_LENGTH,
        "n_mels": N_MELS,
        "num_frames": NUM_FRAMES,
        "normalization": "power_to_db(ref=max, top_db=80) / 80 + 1",
        "dtype": "float16",
        "array_layout": "(frames, n_mels)",
        "max_seconds": float(max_seconds),
    }


@dataclass(frozen=True)
class StoreItem:
    """One curated clip: where its spectrogram lies and what it is labelled."""

    shard: int
    offset: int
    frames: int
    source: str
    sha256: str
    label: str | None
    caption: str | None
    split: str | None
    image: str | None = None
    image_row: int | None = None
    """Row of the item in its shard's image-embedding array, when its frame was embedded."""

    @property
    def text(self) -> str:
        from soundguide.training.datasets import label_text

        if self.caption:
            return self.caption
        return label_text(self.label or "")


class CuratedStore:
    """Read a folder written by :func:`soundguide.training.curation.curate`.

    Spectrogram shards are memory-mapped on first use (per process, so the store
    can be handed to DataLoader workers). Raises :class:`DatasetError` for a
    folder that is not a store.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser()
        index_path = self.path / INDEX_NAME
        if not self.path.is_dir():
            raise DatasetError(f"curated store not found: {self.path}")
        if not index_path.is_file():
            raise DatasetError(
                f"{self.path} is not a curated store: it has no {INDEX_NAME}",
                hint="run `soundguide curate DATASET OUT` first and train on OUT",
            )
        try:
            index = json.loads(index_path.read_text())
        except (OSError, ValueError) as exc:
            raise DatasetError(f"cannot read {index_path}: {exc}") from None
        if not isinstance(index, dict) or index.get("format") != STORE_FORMAT:
            raise DatasetError(f"{index_path} is not a soundguide store index")
        if index.get("version") != STORE_VERSION:
            raise DatasetError(
                f"{self.path} is a store of version {index.get('version')}; this soundguide "
                f"reads version {STORE_VERSION}",
                hint="curate the dataset again",
            )
        self.index = index
        self.settings: dict[str, Any] = index["frontend"]
        self.image_encoder: str | None = index.get("image_encoder")
        self.image_dim: int | None = index.get("image_dim")
        self.items = [StoreItem(**record) for record in index["items"]]
        self.shard_names: list[str] = [s["name"] for s in index["shards"]]
        self.image_files: dict[int, str] = {
            int(k): v for k, v in (index.get("image_files") or {}).items()
        }
        self._arrays: dict[int, np.ndarray] = {}
        self._images: dict[int, np.ndarray] = {}
        if not self.items:
            raise DatasetError(f"curated store {self.path} holds no items")

    def __len__(self) -> int:
        return len(self.items)

    @property
    def labels(self) -> list[str]:
        """Sorted class names of the items that have one."""
        return sorted({item.label for item in self.items if item.label})

    @property
    def has_images(self) -> bool:
        return any(item.image_row is not None for item in self.items)

    def spectrogram(self, index: int) -> torch.Tensor:
        """The stored spectrogram of item ``index``. Output: (128, F) float32 in [0, 1]."""
        item = self.items[index]
        rows = self._shard(item.shard)[item.offset : item.offset + item.frames]
        return torch.from_numpy(np.asarray(rows, dtype=np.float32).T.copy())

    def image_embedding(self, index: int) -> torch.Tensor | None:
        """The CLIP embedding of item ``index``'s video frame. Output: (D,) float32 or None."""
        item = self.items[index]
        if item.image_row is None:
            return None
        if item.shard not in self._images:
            self._images[item.shard] = np.load(
                self.path / SHARDS_DIR / self.image_files[item.shard], mmap_mode="r"
            )
        return torch.from_numpy(np.array(self._images[item.shard][item.image_row], np.float32))

    def _shard(self, shard: int) -> np.ndarray:
        if shard not in self._arrays:
            path = self.path / SHARDS_DIR / f"{self.shard_names[shard]}.npy"
            try:
                self._arrays[shard] = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as exc:
                raise DatasetError(f"cannot read store shard {path}: {exc}") from None
        return self._arrays[shard]

    def __getstate__(self) -> dict[str, Any]:
        # memory maps are reopened in each process rather than pickled
        state = self.__dict__.copy()
        state["_arrays"], state["_images"] = {}, {}
        return state


def write_skipped(path: Path, rows: Sequence[tuple[str, str]]) -> None:
    """``skipped.tsv``: a header, then ``path<TAB>reason`` per skipped file."""
    from soundguide.core.files import atomic_write_text

    def clean(text: str) -> str:
        return " ".join(str(text).replace("\t", " ").split())

    lines = ["path\treason"] + [f"{clean(p)}\t{clean(r)}" for p, r in rows]
    atomic_write_text(path, "\n".join(lines) + "\n")


def read_skipped(path: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """The rows of a ``skipped.tsv`` (without its header)."""
    lines = Path(path).read_text().splitlines()[1:]
    return [tuple(line.split("\t", 1)) for line in lines if line]  # type: ignore[misc]
