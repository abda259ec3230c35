"""Every example config in configs/ passes `soundguide config check`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from soundguide.cli import main

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.toml"))


def test_there_are_example_configs():
    names = {p.name for p in CONFIGS}
    assert {"landscape_explosion.toml", "ffhq_audio_text.toml", "landscape_negative.toml"} <= names
    assert len([p for p in CONFIGS if p.parent.name == "sweep_lambda"]) >= 3


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_check(path, tmp_path, capsys):
    """Valid as shipped except for the sound and the photo, which the user brings (checked too)."""
    photo = "image = " in path.read_text()
    assert main(["config", "check", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{1 + photo} input" in err and "guidance.0.path = " in err and "(not found)" in err
    assert ("optimization.image = " in err) == photo
    sound = tmp_path / "sound.wav"
    sf.write(sound, 0.3 * np.sin(np.arange(44100) / 10.0), 44100)
    sets = ["--set", f'guidance.0.path="{sound}"']
    if photo:
        Image.new("RGB", (64, 64), "gray").save(tmp_path / "me.jpg")
        sets += ["--set", f'optimization.image="{tmp_path / "me.jpg"}"']
    assert main(["config", "check", str(path), *sets]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(f"ok: {path}")
    # the known weights are not downloaded here: said, not an error
    assert "note: stylegan2-" in captured.err and "is not downloaded yet" in captured.err
