"""Latent files: start an edit from a saved W+ code (ours, e4e's, the original code's)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from soundguide.core.checkpoints import load_checkpoint
from soundguide.core.errors import LatentError

SHAPES_HELP = "(1, L, D), (L, D), a W vector (1, D) or (D,), or a stack (N, L, D)"


def _read(path: Path, trust: bool) -> torch.Tensor:
    if path.suffix.lower() == ".npy":
        if not path.is_file():
            raise LatentError(f"latent file not found: {path}")
        try:
            array = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise LatentError(f"cannot read latent file {path}: {exc}") from None
        if not np.issubdtype(array.dtype, np.floating):
            raise LatentError(f"latent file {path} holds {array.dtype}, expected floats")
        return torch.from_numpy(np.ascontiguousarray(array))
    try:
        data = load_checkpoint(path, trust=trust)
    except Exception as exc:
        raise LatentError(str(exc), hint=getattr(exc, "hint", None)) from None
    if isinstance(data, dict):
        tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
        # e4e and friends save {'latents': ...} or {'latent': ...}
        for key in ("latent", "latents", "w", "wplus", "latent_code"):
            if key in tensors:
                return tensors[key]
        if len(tensors) == 1:
            return next(iter(tensors.values()))
        raise LatentError(
            f"latent file {path} holds a dict with keys {sorted(map(str, data))}; "
            "expected a tensor or a dict with one tensor under 'latent'"
        )
    if not isinstance(data, torch.Tensor):
        raise LatentError(f"latent file {path} holds {type(data).__name__}, expected a tensor")
    return data


def load_latent_file(
    path: str | os.PathLike[str],
    num_layers: int,
    latent_dim: int,
    *,
    index: int | Sequence[int] | None = None,
    trust: bool = False,
) -> torch.Tensor:
    """Read a latent file and bring it to (N, L, D), float32, on the CPU.

    Accepts ``.pt`` (a tensor, or a dict holding one) and ``.npy`` files with
    shapes (1, L, D), (L, D), a W vector (1, D) / (D,) broadcast to all layers,
    or a stack (N, L, D); ``index`` picks rows of a stack (default all).
    """
    path = Path(path)
    latent = _read(path, trust).detach().to("cpu", torch.float32)
    shape = tuple(latent.shape)
    L, D = num_layers, latent_dim
    if latent.ndim == 1 and shape == (D,):
        latent = latent.expand(1, L, D)
    elif latent.ndim == 2 and shape == (1, D) and L != 1:
        latent = latent.expand(1, L, D)
    elif latent.ndim == 2 and shape == (L, D):
        latent = latent.unsqueeze(0)
    elif latent.ndim == 3 and shape[1:] == (L, D):
        pass
    else:
        raise LatentError(
            f"latent file {path} has shape {shape}; the generator needs L={L} layers of D={D}: "
            f"expected {SHAPES_HELP}"
        )
    if index is not None:
        rows = [index] if isinstance(index, int) else list(index)
        bad = [i for i in rows if not -latent.shape[0] <= i < latent.shape[0]]
        if bad or not rows:
            raise LatentError(
                f"latent index {bad or rows} out of range for {path}, which holds {latent.shape[0]} latents"
            )
        latent = latent[rows]
    if not torch.isfinite(latent).all():
        raise LatentError(f"latent file {path} contains NaN or infinite values")
    return latent.contiguous().clone()
