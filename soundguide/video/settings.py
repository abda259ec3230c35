"""The ``[video]`` table of a run config, and which audio guidance is the recording.

The table is validated here (``soundguide video`` only; other commands do
not read it) with the located one-line errors of a run config. Flags of the
command (``--chunk``, ``--overlap``, ``--frames``) override it as ``--set`` does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, model_validator

from soundguide.core.interfaces import ConfigPath, StrictModel


class VideoConfig(StrictModel):
    chunk: int = Field(
        16,
        ge=1,
        le=1024,
        description="Frames optimized together (one batch): memory follows it, not the video.",
    )
    overlap: int = Field(
        1,
        ge=0,
        description="Latents of the previous chunk's last frames, fixed, that sequence "
        "regularizers (temporal) see before a chunk's first frame.",
    )
    frames: bool = Field(False, description="Also write every frame as frames/NNNNN.png.")
    timeline: ConfigPath | None = Field(
        None, description="A CSV of start,end,prompt rows (seconds): per-segment text prompts."
    )
    timeline_weight: float = Field(
        0.5, allow_inf_nan=False, description="Weight of the timeline's text term."
    )
    crf: int = Field(18, ge=0, le=51, description="H.264 quality (0 lossless .. 51 worst).")

    @model_validator(mode="after")
    def _overlap_fits(self) -> VideoConfig:
        if self.overlap > self.chunk:
            raise ValueError(f"overlap {self.overlap} is more than chunk {self.chunk}")
        return self


def video_config(
    raw: dict[str, Any] | None, base_dir: Path, source: str, overridden=()
) -> VideoConfig:
    """Validate the raw ``[video]`` table; relative paths resolve against ``base_dir``."""
    from soundguide.core.config import config_error, validation_problem

    try:
        return VideoConfig.model_validate(raw or {}, context={"base_dir": base_dir})
    except ValidationError as exc:
        problems = [validation_problem(e, ["video", *e["loc"]]) for e in exc.errors()]
        raise config_error(source, problems, overridden, hint=None) from None


def recording_index(config: Any) -> int:
    """The guidance that is the recording: the first whose ``over_time`` is set, else the
    only ``audio`` guidance. One-line error when there is none (or several, none chosen)."""
    from soundguide.core.errors import ConfigError

    timed = [i for i, g in enumerate(config.guidance) if getattr(g, "over_time", None) is not None]
    if timed:
        return timed[0]
    audio = [i for i, g in enumerate(config.guidance) if g.type == "audio"]
    if len(audio) == 1:
        return audio[0]
    if not audio:
        raise ConfigError(
            "soundguide video needs an audio guidance: the recording the video follows",
            hint='add [[guidance]] type = "audio" with path = the recording and an over_time table',
        )
    raise ConfigError(
        f"{len(audio)} audio guidances and none has over_time: which one is the recording?",
        hint="give the recording's guidance an over_time table (e.g. over_time = { fps = 12 })",
    )
