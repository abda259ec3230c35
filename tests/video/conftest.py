from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from soundguide.core.plugins import load_registries
from tests import toy_plugins
from tests.video import toy_audio

RATE = 44100


def tone_then_noise(path: Path, seconds: float = 4.0, rate: int = RATE) -> Path:
    """First half a 440 Hz tone, second half white noise, at the same loudness."""
    n = int(seconds * rate)
    t = np.arange(n // 2) / rate
    tone = 0.3 * np.sin(2 * np.pi * 440 * t)
    noise = 0.3 * np.random.default_rng(0).uniform(-1, 1, n - n // 2)
    sf.write(path, np.concatenate([tone, noise]).astype(np.float32), rate)
    return path


@pytest.fixture
def video_registries():
    return load_registries(entry_points=False, plugins=[toy_plugins, toy_audio])


@pytest.fixture
def recording(tmp_path) -> Path:
    return tone_then_noise(tmp_path / "rain-then-thunder.wav")


@pytest.fixture
def video_config(tmp_path, recording):
    """Write a toy video config; keyword arguments fill in its settings."""

    def write(
        *,
        fps: float = 6,
        window: float = 0.5,
        smoothing: str = "none",
        tau: float = 0.0,
        steps: int = 8,
        temporal: float = 0.0,
        video: str = "",
        extra: str = "",
        name: str = "video.toml",
    ) -> Path:
        torch.save({}, tmp_path / "toy-encoder.pt")
        text = f"""
        [generator]
        type = "toy"
        size = 16

        [[guidance]]
        type = "toy-audio"
        path = "{recording.name}"
        encoder = "toy-encoder.pt"
        clip_model = "toy-encoder.pt"
        over_time = {{ window = {window}, fps = {fps}, smoothing = "{smoothing}", tau = {tau} }}

        [[regularizer]]
        type = "temporal"
        weight = {temporal}

        [optimization]
        steps = {steps}
        lr = 0.1
        schedule = "constant"
        seed = 3
        {extra}

        [video]
        {video}
        """
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write
