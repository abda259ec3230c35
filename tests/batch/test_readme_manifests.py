"""The README's manifests ("Many edits") validate as written."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from soundguide.batch.manifest import load_items
from soundguide.core.plugins import load_registries
from soundguide.demo import write_demo_inputs

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def block(marker: str, lang: str) -> str:
    start = README.index("## Many edits")
    start = README.index(marker, start)
    match = re.compile(rf"```{lang}\n(.*?)```", re.S).search(README, start)
    assert match is not None
    return match.group(1)


@pytest.fixture(scope="module")
def two_sounds(tmp_path_factory):
    """The demo's tiny models in a config with two audio guidances and a text one,
    and the README's sounds/*.wav."""
    folder = tmp_path_factory.mktemp("readme")
    inputs = folder / "inputs"
    demo = write_demo_inputs(inputs, steps=2)
    (folder / "sounds").mkdir()
    for sound in ("rain", "fire", "thunder"):
        shutil.copy(inputs / "sound.wav", folder / "sounds" / f"{sound}.wav")
    text = demo.read_text()
    audio = text[
        text.index('[[guidance]]\ntype = "audio"') : text.index('[[guidance]]\ntype = "text"')
    ]
    config = inputs / "two-sounds.toml"
    config.write_text(text.replace(audio, audio + audio))
    return config


@pytest.mark.parametrize(("name", "lang"), [("sounds.csv", "csv"), ("sounds.jsonl", "jsonl")])
def test_manifest_examples_validate(two_sounds, name, lang):
    folder = two_sounds.parents[1]
    manifest = folder / name
    manifest.write_text(block(f"`{name}`", lang))
    items = load_items(two_sounds, manifest, load_registries(entry_points=False), [])
    assert all(item.id for item in items) and len(items) >= 3
    first = items[0].config
    assert first.guidance[0].path == folder / "sounds" / "rain.wav"
    assert first.optimization.seed == 1
