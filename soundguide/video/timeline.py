"""Per-segment prompts: a CSV timeline ``start,end,prompt`` (seconds) for ``soundguide video``.

Rows must be ordered, not overlap, have ``start < end`` and lie within the
recording; a header row ``start,end,prompt`` is allowed. Each video frame
takes the prompt of the segment that holds its time (the middle of its display
interval); frames outside every segment get no text term (weight 0).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from soundguide.core.errors import ConfigError


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    prompt: str


def read_timeline(path: str | Path, seconds: float) -> list[Segment]:
    """The segments of a timeline file for a recording ``seconds`` long; one-line errors."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read timeline {path}: {exc}") from None
    segments: list[Segment] = []
    rows = [row for row in csv.reader(text.splitlines()) if any(cell.strip() for cell in row)]
    for number, row in enumerate(rows, start=1):
        where = f"timeline {path} row {number}"
        cells = [c.strip() for c in row]
        if number == 1 and [c.lower() for c in cells] == ["start", "end", "prompt"]:
            continue
        if len(cells) < 3:
            raise ConfigError(f"{where}: expected start,end,prompt, got {','.join(cells)!r}")
        try:
            start, end = float(cells[0]), float(cells[1])
        except ValueError:
            raise ConfigError(f"{where}: start and end must be seconds, got {cells[:2]}") from None
        prompt = ",".join(cells[2:]).strip()
        if not (math.isfinite(start) and math.isfinite(end)):
            raise ConfigError(f"{where}: start and end must be finite")
        if not prompt:
            raise ConfigError(f"{where}: the prompt is empty")
        if start < 0 or start >= end:
            raise ConfigError(f"{where}: needs 0 <= start < end, got {start:g} .. {end:g}")
        if end > seconds + 1e-6:
            raise ConfigError(
                f"{where}: ends at {end:g} s, after the recording's end ({seconds:.2f} s)"
            )
        if segments and start < segments[-1].start:
            raise ConfigError(
                f"{where}: starts at {start:g} s, before the row above ({segments[-1].start:g} s): "
                "rows must be in time order"
            )
        if segments and start < segments[-1].end:
            raise ConfigError(
                f"{where}: starts at {start:g} s, inside the row above "
                f"({segments[-1].start:g} .. {segments[-1].end:g} s): segments must not overlap"
            )
        segments.append(Segment(start, end, prompt))
    if not segments:
        raise ConfigError(
            f"timeline {path} has no rows", hint="one row per segment: start,end,prompt"
        )
    return segments


def frame_segments(segments: list[Segment], frames: int, fps: float) -> list[int | None]:
    """Per video frame, the index of the segment holding its time, or None."""
    out: list[int | None] = []
    for k in range(frames):
        t = (k + 0.5) / fps
        out.append(next((i for i, s in enumerate(segments) if s.start <= t < s.end), None))
    return out
