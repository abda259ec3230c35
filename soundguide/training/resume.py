"""What makes a training run resumable: its checkpoint file and the RNG states in it.

A checkpoint (``OUT/checkpoints/last.pt``, written by rank 0) holds plain
containers only, so the safe loader reads it without running code: the config
as a dict, state dicts of the encoder, loss, optimizer, scheduler and grad
scaler, each rank's RNG states (torch, CUDA, numpy, python), the position
(epoch, step), the history and a fingerprint of the store. Every random choice
of the data comes from per-example seeds, so a resumed run continues exactly
as if it had never stopped.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from soundguide.core.checkpoints import load_checkpoint
from soundguide.core.errors import CheckpointError
from soundguide.core.files import atomic_write
from soundguide.training.config import TrainConfig

if TYPE_CHECKING:
    from soundguide.training.store import CuratedStore

CHECKPOINT_FORMAT = "soundguide-train"
CHECKPOINT_VERSION = 1
LAST_CHECKPOINT = Path("checkpoints") / "last.pt"
"""The resume checkpoint, relative to the run folder."""


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A training checkpoint's state; :class:`CheckpointError` for any other file or version."""
    state = load_checkpoint(path)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a soundguide training checkpoint")
    if state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path} is a training checkpoint of version {state.get('version')}; "
            f"this soundguide reads version {CHECKPOINT_VERSION}"
        )
    return state


def write_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` (plus format and version) atomically: a crash leaves the previous one."""
    full = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}
    atomic_write(path, lambda fh: torch.save(full, fh))


def load_run_config(out: str | Path) -> TrainConfig | None:
    """The config stored in ``OUT/checkpoints/last.pt``, or None when there is none."""
    path = Path(out).expanduser() / LAST_CHECKPOINT
    if not path.is_file():
        return None
    state = read_checkpoint(path)
    return TrainConfig.from_dict(state["config"], source=str(path))


def store_fingerprint(store: CuratedStore) -> str:
    """sha256 over every item's audio checksum, label, caption and split, in order."""
    digest = hashlib.sha256()
    for item in store.items:
        fields = (item.sha256, item.label or "", item.caption or "", item.split or "")
        digest.update("\t".join(fields).encode() + b"\n")
    return digest.hexdigest()


# -- RNG states (plain containers, for the safe loader) --------------------------------


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's global generators (a training process owns them)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors, numbers, strings and lists."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, values, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": version, "state": list(values), "gauss": gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (
            n["name"],
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
