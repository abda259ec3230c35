from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def demo_models(tmp_path_factory) -> dict[str, Path]:
    """The demo's tiny random models (StyleGAN2 32 px, CLIP, SoundCLIP) and its sound."""
    from soundguide.demo import write_demo_inputs

    folder = tmp_path_factory.mktemp("demo-models")
    write_demo_inputs(folder)
    return {
        "generator": folder / "stylegan2-tiny.pt",
        "clip": folder / "clip-tiny.pt",
        "audio_encoder": folder / "soundclip-random.pt",
        "sound": folder / "sound.wav",
    }
