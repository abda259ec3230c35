"""What the app's tests share: a page's state built from the demo's models."""

from __future__ import annotations

from soundguide.app.configs import PageRun, Source


def page_run(models, **changes) -> PageRun:
    """A page with the demo's models, a sound at 0.8 and a prompt at -0.3; ``changes``
    set or replace any other field of :class:`PageRun`."""
    values = dict(
        sources=[Source("audio", str(models["sound"]), 0.8), Source("text", "a fire", -0.3)],
        generator={"type": "stylegan2", "checkpoint": str(models["generator"])},
        clip_model=str(models["clip"]),
        audio_encoder=str(models["audio_encoder"]),
    )
    values.update(changes)
    return PageRun(**values)
