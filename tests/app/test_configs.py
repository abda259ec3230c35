"""The page's state -> run config layer, without a browser: validation, TOML, upload limits."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from soundguide.app.configs import (
    MAX_IMAGE_PIXELS,
    PageRun,
    Source,
    check_audio,
    check_image,
    check_page,
    config_toml,
    copy_inputs,
    field_specs,
    form_values,
    generator_choices,
    run_data,
    validate,
)
from soundguide.core.config import load_config
from soundguide.core.errors import AudioError, ConfigError, ImageError, LatentError
from soundguide.core.plugins import load_registries
from tests import toy_plugins
from tests.app import helpers


@pytest.fixture
def registries():
    return load_registries(entry_points=False, plugins=[toy_plugins])


def page_run(models, **changes) -> PageRun:
    settings = dict(seed=11, steps=3, lr=0.05, regularizers={"latent_l2": 0.002, "identity": 0.0})
    return helpers.page_run(models, **{**settings, **changes})


def test_page_state_becomes_the_config_the_toml_reproduces(demo_models, registries, tmp_path):
    run = copy_inputs(page_run(demo_models), tmp_path / "inputs")
    assert (tmp_path / "inputs" / "audio-0.wav").read_bytes() == demo_models["sound"].read_bytes()
    data = run_data(run, tmp_path / "rerun")
    config = validate(data, registries)
    assert [(g.type, g.weight) for g in config.guidance] == [("audio", 0.8), ("text", -0.3)]
    assert [r.type for r in config.regularizer] == ["latent_l2"]  # weight 0: left out
    assert config.optimization.seed == 11 and config.optimization.lr == 0.05
    (tmp_path / "config.toml").write_text(config_toml(data))
    again = load_config(tmp_path / "config.toml", registries)
    assert again.model_dump() == config.model_dump()


def test_start_modes_and_paper_preset(demo_models, registries, tmp_path):
    mean = validate(run_data(page_run(demo_models, start="mean latent"), tmp_path), registries)
    assert mean.optimization.mode == "generate"
    paper = validate(run_data(page_run(demo_models, paper=True), tmp_path), registries)
    assert paper.optimization.preset == "paper"
    assert {g.loss for g in paper.guidance} == {"paper"}  # the preset reaches the plugins


def test_bad_values_get_the_clis_one_line_errors(demo_models, registries, tmp_path):
    with pytest.raises(ConfigError, match=r"^page: optimization\.steps: input should be"):
        validate(run_data(page_run(demo_models, steps=-1), tmp_path), registries)
    with pytest.raises(ConfigError, match="no guidance source"):
        check_page(page_run(demo_models, sources=[]))
    with pytest.raises(ConfigError, match=r"source 1 \(text\): the prompt is empty"):
        check_page(page_run(demo_models, sources=[Source("text", "  ")]))
    with pytest.raises(ConfigError, match="upload a photo"):
        check_page(page_run(demo_models, start="photo"))
    with pytest.raises(ConfigError, match="seed .* out of range"):
        check_page(page_run(demo_models, seed=2**63))


def test_a_text_file_is_not_audio(tmp_path):
    fake = tmp_path / "notes.wav"
    fake.write_text("not a sound\n" * 20)
    with pytest.raises(AudioError, match="not an audio file") as info:
        check_audio(fake)
    assert "\n" not in str(info.value)


def test_audio_longer_than_ten_minutes_is_refused(tmp_path):
    rate = 1000
    short, long = tmp_path / "short.wav", tmp_path / "long.wav"
    sf.write(short, np.zeros(600 * rate, np.int16), rate, subtype="PCM_16")
    sf.write(long, np.zeros(601 * rate, np.int16), rate, subtype="PCM_16")
    assert check_audio(short) == 600.0
    with pytest.raises(AudioError, match="10.0 minutes long; the app takes at most 10 minutes"):
        check_audio(long)


def test_pictures_over_50_megapixels_are_refused(tmp_path):
    side = int(MAX_IMAGE_PIXELS**0.5) + 1  # 7072 x 7072: just over 50 MP
    big = tmp_path / "big.png"
    Image.new("1", (side, side)).save(big)  # one bit per pixel: a small file
    with pytest.raises(ImageError, match="megapixels|pixels"):
        check_image(big)
    small = tmp_path / "small.png"
    Image.new("RGB", (64, 48)).save(small)
    check_image(small)
    text = tmp_path / "picture.png"
    text.write_text("no picture")
    with pytest.raises(ImageError, match="not a picture file"):
        check_image(text, what="reference image")


def test_plugin_forms_come_from_the_pydantic_config(registries):
    specs = {s.name: s for s in field_specs(registries.guidances.get("toy-target").Config)}
    assert "type" not in specs and "weight" not in specs
    assert (specs["dim"].widget, specs["dim"].default) == ("integer", 16)
    assert specs["items"].description == "Give this many per-item targets."
    assert specs["space_name"].widget == "text"
    assert specs["vector"].widget == "toml"
    ordered = list(specs.values())
    values = ["toy", 8, 3, "[0.5, 1.5]", "", "2", ""]  # optional numbers come as text
    assert form_values(ordered, values) == {
        "space_name": "toy",
        "dim": 8,
        "seed": 3,
        "vector": [0.5, 1.5],
        "items": 2,
    }
    text = {s.name: s for s in field_specs(registries.guidances.get("text").Config)}
    assert text["clip_preprocess"].widget == "choice"
    assert text["clip_preprocess"].choices == ["clip", "paper"]
    assert text["prompt"].required


def test_generator_dropdown_lists_presets_and_local_checkpoints(registries):
    choices = generator_choices(registries)
    assert choices["stylegan2: landscape"] == {"type": "stylegan2", "preset": "landscape"}
    assert choices["stylegan2: local checkpoint"] == {"type": "stylegan2", "checkpoint": None}
    assert "nvidia: local checkpoint" in choices
    assert choices["toy"] == {"type": "toy"}  # needs no file


def test_a_latent_file_start_is_copied_and_named_in_the_config(demo_models, registries, tmp_path):
    latent = tmp_path / "upload" / "w.pt"
    latent.parent.mkdir()
    torch.save(torch.zeros(1, 8, 64), latent)
    run = copy_inputs(
        page_run(demo_models, start="latent file", latent=str(latent)), tmp_path / "in"
    )
    config = validate(run_data(run, tmp_path / "rerun"), registries)
    assert config.optimization.latent == (tmp_path / "in" / "start-latent.pt").resolve()
    bad = tmp_path / "w.npy"
    bad.write_bytes(b"x")
    with pytest.raises(LatentError, match=r"w\.npy: expected a \.pt tensor file"):
        check_page(page_run(demo_models, start="latent file", latent=str(bad)))
