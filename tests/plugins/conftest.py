from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from tests.encoders.test_clip import tiny_clip


@pytest.fixture(scope="session")
def clip_file(tmp_path_factory):
    """A tiny random CLIP (224 px ViT, embed dim 32) saved as a plain state dict."""
    path = tmp_path_factory.mktemp("clip") / "tiny_clip.pt"
    torch.save(tiny_clip(seed=0).state_dict(), path)
    return path


@pytest.fixture(scope="session")
def soundclip_file(tmp_path_factory):
    """Random SoundCLIP weights whose fc is resized to CLIP's tiny 32-dim space."""
    from soundguide.encoders.soundclip import SoundCLIPEncoder

    torch.manual_seed(1)
    encoder = SoundCLIPEncoder(embed_dim=32)
    path = tmp_path_factory.mktemp("soundclip") / "soundclip.pt"
    torch.save({f"module.{k}": v for k, v in encoder.state_dict().items()}, path)
    return path


def write_tone(path, freq: float, seconds: float = 2.0, rate: int = 44100, channels: int = 1):
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * freq * t) * np.exp(-t)
    sf.write(path, np.stack([wave] * channels, axis=1), rate)
    return path


@pytest.fixture
def tones(tmp_path):
    return [write_tone(tmp_path / f"tone{i}.wav", f) for i, f in enumerate((220.0, 880.0, 3000.0))]
