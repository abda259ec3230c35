"""A video's frames optimized in chunks: each chunk is one batch of :meth:`Editor.run_items`.

Frames ``[a, b)`` of a chunk are optimized together, every frame from the same
start latent, towards its own targets. The last ``overlap`` frames of the
previous chunk, fixed (not optimized again), precede the chunk for sequence
regularizers (``temporal``), so neighbouring chunks join without a jump: they
are handed over as the latents those frames had at each step of their own
chunk (steps x overlap x L x D, whatever the video's length), so step s of a
chunk sees them as step s of one whole-video run would. With a causal
``temporal`` term a chunked run then follows the whole run's paths. The models are
built once (one Editor); memory follows ``chunk``, not the video's length.

A chunk that is stopped (Ctrl-C, SIGTERM, a failed write) or fails is dropped
and the loop ends: the finished chunks are kept. A chunk whose loss went
non-finite keeps the latents its run kept (the last finite ones) and ends the loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch


def chunk_ranges(frames: int, chunk: int) -> list[tuple[int, int]]:
    """``[a, b)`` of each chunk."""
    return [(a, min(a + chunk, frames)) for a in range(0, frames, chunk)]


@dataclass
class FramesResult:
    status: str
    message: str
    latents: torch.Tensor
    """(frames done, L, D) on the CPU."""
    losses: list[dict[str, Any]] = field(default_factory=list)
    """Per frame done: its final weighted terms and total."""
    chunks: list[dict[str, Any]] = field(default_factory=list)
    error: BaseException | None = None

    @property
    def done(self) -> int:
        return self.latents.shape[0]


def _rows(value: torch.Tensor, a: int, b: int) -> torch.Tensor:
    return value[a:b] if value.ndim == 2 else value


def optimize_frames(
    editor: Any,
    start: torch.Tensor,
    targets: dict[str, torch.Tensor],
    frames: int,
    *,
    chunk: int,
    overlap: int = 1,
    weights: dict[str, torch.Tensor] | None = None,
    on_chunk: Callable[[int, Any], None] | None = None,
    before_chunk: Callable[[int], None] | None = None,
    stopped: Callable[[], bool] = lambda: False,
    progress: bool = True,
) -> FramesResult:
    """Optimize ``frames`` frames in chunks with ``editor`` (built once).

    ``start``: (1, L, D); ``targets``: label -> (frames, D) per frame or (D,) for
    all; ``weights``: label -> (frames,) per-frame multipliers. ``on_chunk(a, result)``
    receives each finished chunk (its first frame and :class:`RunResult`);
    ``before_chunk(n)`` runs before each chunk of ``n`` frames; ``stopped()`` is
    asked between chunks.
    """
    from soundguide.core.progress import progress_bar

    ranges = chunk_ranges(frames, chunk)
    kept: list[torch.Tensor] = []
    losses: list[dict[str, Any]] = []
    records: list[dict[str, Any]] = []
    status, message, error = "finished", f"finished {frames} frames", None
    bar = progress_bar(total=frames, desc="frames", unit="frame", enabled=progress)
    position = {"chunk": 0}

    trajectory: list[torch.Tensor] = []  # the chunk's last `overlap` frames, step by step

    def show(event: Any) -> None:
        if overlap > 0:
            trajectory.append(event.latent[-overlap:].detach().clone())
        if not event.final:
            bar.set_postfix_str(
                f"chunk {position['chunk'] + 1}/{len(ranges)} step {event.step}/{event.steps}"
            )

    editor.subscribe(show)
    previous: torch.Tensor | None = None
    try:
        for k, (a, b) in enumerate(ranges):
            position["chunk"] = k
            done = sum(t.shape[0] for t in kept)
            if stopped() or editor.stop.requested:
                status = "interrupted"
                message = f"stopped after {done} of {frames} frames; kept the finished chunks"
                break
            n = b - a
            before = previous
            trajectory.clear()
            if before_chunk is not None:
                before_chunk(n)
            began = time.perf_counter()
            try:
                result = editor.run_items(
                    start.expand(n, -1, -1),
                    {label: _rows(t, a, b) for label, t in targets.items()},
                    weights={label: w[a:b] for label, w in (weights or {}).items()},
                    before=before,
                )
            except KeyboardInterrupt:
                result = None
            seconds = time.perf_counter() - began
            if result is None or result.status in ("interrupted", "failed"):
                status = "interrupted" if result is None else result.status
                error = None if result is None else result.error
                why = "stopped" if status == "interrupted" else "failed"
                message = (
                    f"{why} in frames {a}..{b - 1} ({result.message if result else 'Ctrl-C'}); "
                    f"kept the {done} of {frames} frames of the finished chunks"
                )
                records.append({"first": a, "frames": n, "status": status, "seconds": seconds})
                break
            if on_chunk is not None:
                try:
                    on_chunk(a, result)
                except Exception as exc:  # e.g. a full disk: keep the chunks before it
                    status, error = "failed", exc
                    message = (
                        f"could not write frames {a}..{b - 1} ({exc}); kept the {done} of "
                        f"{frames} frames of the finished chunks"
                    )
                    records.append({"first": a, "frames": n, "status": status, "seconds": seconds})
                    break
            latent = result.edited_latent.detach().cpu()
            kept.append(latent)
            # the overlap at every step of this chunk, ending with its kept latents
            if overlap > 0:
                tail = result.edited_latent[-overlap:].detach()
                steps = [t.to(tail.device) for t in trajectory[: result.edited_step]]
                previous = torch.stack([*steps, tail])
            final = result.final_losses or {}
            for i in range(n):
                losses.append(
                    {
                        "frame": a + i,
                        "total": final["total"][i] if final else None,
                        "terms": {t: v[i] for t, v in final.get("terms", {}).items()},
                    }
                )
            records.append(
                {
                    "first": a,
                    "frames": n,
                    "status": result.status,
                    "steps_done": result.steps_done,
                    "seconds": seconds,
                }
            )
            bar.update(n)
            if result.status == "nonfinite":
                status = "nonfinite"
                message = (
                    f"loss became non-finite in frames {a}..{b - 1} ({result.message}); "
                    f"kept {done + n} of {frames} frames"
                )
                break
    finally:
        bar.close()
    latents = torch.cat(kept) if kept else start[:0].detach().cpu()
    return FramesResult(status, message, latents, losses, records, error)
