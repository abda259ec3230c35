"""One item of a batch run, as if it had run alone: its slice of a RunResult and of
each StepEvent, so a batch item's folder holds exactly what a single edit writes."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from soundguide.core.engine import RunResult, StepEvent


def _record(record: dict[str, Any] | None, i: int) -> dict[str, Any] | None:
    if record is None:
        return None
    total = [record["total"][i]]
    terms = {k: [v[i]] for k, v in record["terms"].items()}
    return {**record, "total": total, "total_sum": float(total[0]), "terms": terms}


def item_result(
    result: RunResult,
    i: int,
    *,
    own: Iterable[str | Path] = (),
    others: Iterable[str | Path] = (),
) -> RunResult:
    """Item ``i`` of a batch's result. ``others``: the batch-mates' own input files,
    left out of this item's file list unless they are its ``own`` too (a shared sound)."""
    n = result.edited_latent.shape[0]
    if not 0 <= i < n:
        raise IndexError(f"item {i} of a batch of {n}")
    skip = {Path(p).resolve() for p in others} - {Path(p).resolve() for p in own}
    return dataclasses.replace(
        result,
        source_latent=result.source_latent[i : i + 1],
        edited_latent=result.edited_latent[i : i + 1],
        source_image=result.source_image[i : i + 1],
        edited_image=None if result.edited_image is None else result.edited_image[i : i + 1],
        history=[_record(r, i) for r in result.history],
        seeds=None if result.seeds is None else [result.seeds[i]],
        files=[f for f in result.files if Path(f).resolve() not in skip],
        final_losses=_record(result.final_losses, i),
        photo=None if result.photo is None else result.photo[i : i + 1],
        photos=[result.photos[i]] if len(result.photos) == n else list(result.photos),
    )


def item_event(event: StepEvent, i: int) -> StepEvent:
    """Item ``i`` of a batch's step event."""
    return dataclasses.replace(
        event,
        latent=event.latent[i : i + 1],
        image=event.image[i : i + 1],
        losses={k: v[i : i + 1] for k, v in event.losses.items()},
    )
