"""Which rows go together, and which process runs them: pure functions of the manifest.

Rows are grouped into batches by :func:`make_batches` from the whole manifest,
never from what one process holds, so the batches (and so every item's bits)
are the same whatever the number of processes; batch ``k`` belongs to rank
``k mod world_size`` (:func:`owner`). A rerun with another world size gives
other owners, but an item is done when its folder says so, whoever made it,
so nothing done is redone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def make_batches(keys: Sequence[str], batch_size: int) -> list[list[int]]:
    """Indices of ``keys`` grouped into batches of at most ``batch_size``.

    Rows with equal keys (equal shared settings) are taken in manifest order
    and cut into runs of ``batch_size``; batches are ordered by their first row.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    open_batch: dict[str, list[int]] = {}
    batches: list[list[int]] = []
    for index, key in enumerate(keys):
        batch = open_batch.get(key)
        if batch is None or len(batch) >= batch_size:
            batch = []
            open_batch[key] = batch
            batches.append(batch)
        batch.append(index)
    return batches


def owner(batch_number: int, world_size: int) -> int:
    """The rank that runs batch ``batch_number`` (counted from 0)."""
    return batch_number % world_size


def share(batches: Sequence[T], rank: int, world_size: int) -> list[T]:
    """The batches rank ``rank`` of ``world_size`` runs, in order."""
    return [b for k, b in enumerate(batches) if owner(k, world_size) == rank]
