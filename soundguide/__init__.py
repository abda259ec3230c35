"""soundguide: edit and generate images guided by sound, text and pictures.

Plugin authors need only this module (a source in CLIP space subclasses
``soundguide.CLIPGuidance`` instead, see the README)::

    import soundguide

    class MySource(soundguide.Guidance):
        class Config(soundguide.GuidanceConfig):
            type: Literal["my-source"] = "my-source"
        ...

    @soundguide.hookimpl
    def register_guidances(registry):
        registry.add(MySource)
"""

from __future__ import annotations

from soundguide.api import edit, load_config
from soundguide.core.checkpoints import KnownWeights
from soundguide.core.engine import Editor, RunResult, StepEvent
from soundguide.core.errors import SoundguideError
from soundguide.core.hookspecs import hookimpl
from soundguide.core.interfaces import (
    ConfigPath,
    Generator,
    GeneratorConfig,
    Guidance,
    GuidanceConfig,
    ImageEncoder,
    Inversion,
    Inverter,
    InverterConfig,
    Regularizer,
    RegularizerConfig,
    RunContext,
    Seed,
    WeightsRef,
)

__version__ = "0.1.0"

_CLIP_SPACE = ("CLIPGuidance", "CLIPGuidanceConfig", "clip_space")


def __getattr__(name: str):
    # the CLIP-space base classes live with the built-in plugins; imported on first use
    if name in _CLIP_SPACE:
        from soundguide.plugins import clip_space

        return getattr(clip_space, name)
    raise AttributeError(f"module 'soundguide' has no attribute {name!r}")


__all__ = [
    "CLIPGuidance",
    "CLIPGuidanceConfig",
    "ConfigPath",
    "Editor",
    "Generator",
    "GeneratorConfig",
    "Guidance",
    "GuidanceConfig",
    "ImageEncoder",
    "Inversion",
    "Inverter",
    "InverterConfig",
    "KnownWeights",
    "Regularizer",
    "RegularizerConfig",
    "RunContext",
    "RunResult",
    "Seed",
    "StepEvent",
    "WeightsRef",
    "SoundguideError",
    "__version__",
    "clip_space",
    "edit",
    "hookimpl",
    "load_config",
]
