"""soundguide: edit and generate images guided by sound, text and pictures.

Plugin authors need only this module::

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
    Regularizer,
    RegularizerConfig,
    RunContext,
    Seed,
    WeightsRef,
)

__version__ = "0.1.0"

__all__ = [
    "ConfigPath",
    "Editor",
    "Generator",
    "GeneratorConfig",
    "Guidance",
    "GuidanceConfig",
    "ImageEncoder",
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
    "edit",
    "hookimpl",
    "load_config",
]
