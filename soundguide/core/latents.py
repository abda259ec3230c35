"""Latent files: start an edit from a saved W+ code (ours, e4e's, the original code's).

Memory follows the rows used, not the file: ``.npy`` files are memory-mapped
and zip-format ``.pt`` files mapped by ``torch.load(mmap=True)``, the rows that
``latent_index`` picks are copied out once, and a stack with more rows than
one run may optimize is refused before anything is copied.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from soundguide.core.checkpoints import load_checkpoint
from soundguide.core.errors import LatentError

SHAPES_HELP = "(1, L, D), (L, D), a W vector (1, D) or (D,), or a stack (N, L, D)"


def _read(path: Path, trust: bool) -> np.ndarray | torch.Tensor:
    """The array in a latent file, memory-mapped where the format allows (nothing copied)."""
    if path.suffix.lower() == ".npy":
        if not path.is_file():
            raise LatentError(
                f"latent file not found: {path}",
                hint="relative paths resolve against the config's folder",
            )
        dtype = _npy_dtype(path)
        if dtype is not None and dtype.hasobject:
            raise LatentError(
                f"latent file {path} holds pickled Python objects, not numbers; "
                "refusing to unpickle it (that could run code)",
                hint="save the latents as a float array: np.save(path, w.astype(np.float32))",
            )
        try:
            # allow_pickle=False: an object array would unpickle (run) code
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except Exception as exc:
            raise LatentError(f"cannot read latent file {path}: {exc}") from None
        if not np.issubdtype(array.dtype, np.floating):
            raise LatentError(f"latent file {path} holds {array.dtype}, expected floats")
        return array
    try:
        data = load_checkpoint(path, trust=trust, mmap=True)
    except Exception as exc:
        raise LatentError(str(exc), hint=getattr(exc, "hint", None)) from None
    if isinstance(data, dict):
        tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
        # e4e and friends save {'latents': ...} or {'latent': ...}
        for key in ("latent", "latents", "w", "wplus", "latent_code"):
            if key in tensors:
                data = tensors[key]
                break
        else:
            if len(tensors) != 1:
                raise LatentError(
                    f"latent file {path} holds a dict with keys {sorted(map(str, data))}; "
                    "expected a tensor or a dict with one tensor under 'latent'"
                )
            data = next(iter(tensors.values()))
    if not isinstance(data, torch.Tensor):
        raise LatentError(f"latent file {path} holds {type(data).__name__}, expected a tensor")
    if not data.is_floating_point():
        raise LatentError(f"latent file {path} holds {data.dtype}, expected floats")
    return data


def _npy_dtype(path: Path) -> np.dtype | None:
    """The dtype in a ``.npy`` header (nothing else is read); None for format 3.0."""
    from numpy.lib import format as npy

    readers = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}
    try:
        with open(path, "rb") as fh:
            reader = readers.get(npy.read_magic(fh))
            return reader(fh)[2] if reader is not None else None
    except Exception as exc:
        raise LatentError(f"cannot read latent file {path}: not a .npy array ({exc})") from None


def load_latent_file(
    path: str | os.PathLike[str],
    num_layers: int,
    latent_dim: int,
    *,
    index: int | Sequence[int] | None = None,
    trust: bool = False,
    max_rows: int | None = None,
) -> torch.Tensor:
    """Read a latent file and bring it to (N, L, D), float32, on the CPU.

    Accepts ``.pt`` (a tensor, or a dict holding one) and ``.npy`` files with
    shapes (1, L, D), (L, D), a W vector (1, D) / (D,) broadcast to all layers,
    or a stack (N, L, D); ``index`` picks rows of a stack (default all). Only
    the picked rows are read into memory. More than ``max_rows`` rows is a
    :class:`LatentError` (raised before any row is copied).
    """
    path = Path(path)
    data = _read(path, trust)
    shape = tuple(data.shape)
    L, D = num_layers, latent_dim
    if shape in ((D,), (1, D)) and (len(shape) == 1 or L != 1):
        data = data.reshape(1, 1, D)  # a W vector: broadcast to every layer below
    elif shape == (L, D):
        data = data.reshape(1, L, D)
    elif not (len(shape) == 3 and shape[1:] == (L, D)):
        raise LatentError(
            f"latent file {path} has shape {shape}; the generator needs L={L} layers of D={D}: "
            f"expected {SHAPES_HELP}"
        )
    count = data.shape[0]
    rows = (
        list(range(count)) if index is None else [index] if isinstance(index, int) else list(index)
    )
    bad = [i for i in rows if not -count <= i < count]
    if bad or not rows:
        raise LatentError(
            f"latent index {bad or rows} out of range for {path}, which holds {count} latents"
        )
    if max_rows is not None and len(rows) > max_rows:
        raise LatentError(
            f"latent file {path} holds {count} latents and a run optimizes every row it uses "
            f"together, at most {max_rows} (optimization.max_batch)",
            hint="pick rows with optimization.latent_index (e.g. latent_index = [0, 1, 2]), "
            "or raise optimization.max_batch if your device has the memory",
        )
    picked = data[rows] if rows != list(range(count)) else data
    latent = torch.empty((len(rows), data.shape[1], D), dtype=torch.float32)
    if isinstance(picked, np.ndarray):
        latent.numpy()[...] = picked  # the one copy (and cast) out of the mapped file
    else:
        latent.copy_(picked)
    # in blocks of rows: torch.isfinite of the whole stack would hold temporaries
    # of about twice its size (|x| and two masks)
    if not all(bool(torch.isfinite(block).all()) for block in latent.split(64)):
        raise LatentError(f"latent file {path} contains NaN or infinite values")
    return latent.expand(-1, L, -1).contiguous() if latent.shape[1] != L else latent
