from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from tests.factories import save_random_soundclip, save_tiny_clip


@pytest.fixture(scope="session")
def clip_file(tmp_path_factory):
    """A tiny random CLIP (224 px ViT, embed dim 32) saved as a plain state dict."""
    return save_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny_clip.pt", seed=0)


@pytest.fixture(scope="session")
def soundclip_file(tmp_path_factory):
    """Random SoundCLIP weights whose fc is resized to CLIP's tiny 32-dim space."""
    path = tmp_path_factory.mktemp("soundclip") / "soundclip.pt"
    return save_random_soundclip(path, embed_dim=32, seed=1)


def write_tone(path, freq: float, seconds: float = 2.0, rate: int = 44100, channels: int = 1):
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * freq * t) * np.exp(-t)
    sf.write(path, np.stack([wave] * channels, axis=1), rate)
    return path


@pytest.fixture
def tones(tmp_path):
    return [write_tone(tmp_path / f"tone{i}.wav", f) for i, f in enumerate((220.0, 880.0, 3000.0))]
