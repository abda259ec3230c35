"""Every example config in configs/ passes `soundguide config check`."""

from __future__ import annotations

from pathlib import Path

import pytest

from soundguide.cli import main

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.toml"))


def test_there_are_example_configs():
    names = {p.name for p in CONFIGS}
    assert {"landscape_explosion.toml", "ffhq_audio_text.toml", "landscape_negative.toml"} <= names
    assert len([p for p in CONFIGS if p.parent.name == "sweep_lambda"]) >= 3


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_check(path, capsys):
    assert main(["config", "check", str(path)]) == 0
    assert capsys.readouterr().out.startswith(f"ok: {path}")
