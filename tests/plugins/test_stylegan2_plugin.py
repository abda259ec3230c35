from __future__ import annotations

import json

import pytest
import torch

import soundguide
from soundguide.core.config import load_config
from soundguide.core.engine import Editor
from soundguide.core.errors import CheckpointError, ConfigError
from soundguide.generators.stylegan2 import StyleGAN2Generator
from soundguide.plugins.stylegan2 import PRESETS


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    g = StyleGAN2Generator(16, style_dim=32, n_mlp=2, channel_multiplier=1)
    for p in g.parameters():
        torch.nn.init.normal_(p, std=0.5)
    path = tmp_path_factory.mktemp("ckpt") / "g.pt"
    torch.save({"g_ema": g.state_dict(), "latent_avg": torch.zeros(32)}, path)
    return path


CONFIG = """
[generator]
type = "stylegan2"
checkpoint = "{ckpt}"
mean_samples = 64

[[guidance]]
type = "toy-target"
dim = 16

[[regularizer]]
type = "latent_l2"
weight = 0.01

[optimization]
steps = 4
seed = [1, 2]

[output]
dir = "out"
"""


def test_runs_through_the_engine_from_toml(registries, write_config, tiny_checkpoint, tmp_path):
    cfg = load_config(write_config(CONFIG.format(ckpt=tiny_checkpoint)), registries)
    result = soundguide.edit(cfg, registries=registries, progress=False)
    assert result.ok
    assert result.edited_latent.shape == (2, 6, 32)  # 16 px: L = 2 * 4 - 2
    assert result.edited_image.shape == (2, 3, 16, 16)
    assert not torch.equal(result.edited_latent, result.source_latent)
    manifest = json.loads((tmp_path / "out" / "run.json").read_text())
    files = {f["path"]: f["sha256"] for f in manifest["files"]}
    assert str(tiny_checkpoint) in files and len(files[str(tiny_checkpoint)]) == 64


def test_mean_latent_is_computed_once_per_checkpoint(
    registries, write_config, tiny_checkpoint, monkeypatch
):
    cfg = load_config(write_config(CONFIG.format(ckpt=tiny_checkpoint)), registries)
    calls = {"n": 0}
    original = StyleGAN2Generator.mapping

    def counting(self, z):
        calls["n"] += z.shape[0]
        return original(self, z)

    monkeypatch.setattr(StyleGAN2Generator, "mapping", counting)
    first = Editor(cfg, registries, progress=False)
    first.prepare()
    assert calls["n"] == 64 + 2  # mean samples + two start latents
    second = Editor(cfg, registries, progress=False)
    second.prepare()
    assert calls["n"] == 64 + 2 + 2  # the mean came from the cache
    torch.testing.assert_close(first.generator.mean_latent(), second.generator.mean_latent())
    assert first.generator.num_layers == 6 and first.generator.latent_dim == 32


def test_edit_mode_start_equals_truncated_mapping(registries, write_config, tiny_checkpoint):
    cfg = load_config(
        write_config(CONFIG.format(ckpt=tiny_checkpoint)), registries, ["optimization.seed=5"]
    )
    editor = Editor(cfg, registries, progress=False)
    editor.prepare()
    model = editor.generator.model
    z = torch.randn(1, 32, generator=torch.Generator().manual_seed(5))
    mean = editor.generator.mean_latent()[:, 0]
    expected = mean + 0.7 * (model.mapping(z) - mean)
    torch.testing.assert_close(editor.w0, expected[:, None].expand(1, 6, 32))


@pytest.mark.parametrize(("setting", "expected"), [(None, True), ("false", False)])
def test_winograd_follows_the_config(registries, write_config, tiny_checkpoint, setting, expected):
    overrides = [] if setting is None else [f"generator.winograd={setting}"]
    cfg = load_config(write_config(CONFIG.format(ckpt=tiny_checkpoint)), registries, overrides)
    editor = Editor(cfg, registries, progress=False)
    editor.prepare()
    assert editor.generator.model.winograd is expected


def test_preset_size_is_checked_against_the_checkpoint(registries, write_config, tiny_checkpoint):
    text = CONFIG.format(ckpt=tiny_checkpoint).replace(
        'type = "stylegan2"', 'type = "stylegan2"\npreset = "landscape"'
    )
    cfg = load_config(write_config(text), registries)
    with pytest.raises(CheckpointError, match=r"checkpoint is 16 px \(6 layers\), config says 256"):
        Editor(cfg, registries, progress=False).prepare()


def test_preset_without_weights_offline(registries, write_config, monkeypatch):
    text = CONFIG.replace('checkpoint = "{ckpt}"', 'preset = "lsun-cat"')
    cfg = load_config(write_config(text), registries)
    with pytest.raises(ConfigError, match="'stylegan2-lsun-cat' has no public download") as info:
        Editor(cfg, registries, progress=False).prepare()
    assert "convert_weight.py" in info.value.hint


def test_preset_or_checkpoint_is_required(registries, write_config):
    text = CONFIG.replace('checkpoint = "{ckpt}"\n', "")
    with pytest.raises(ConfigError, match=r"generator: set preset"):
        load_config(write_config(text), registries)


def test_presets_cover_the_paper_models():
    assert PRESETS["ffhq"].size == 1024 and PRESETS["landscape"].size == 256
    assert PRESETS["lsun-car"].content_box == (64, 0, 384, 512)
    registries = soundguide.core.plugins.load_registries(entry_points=False)
    for preset in PRESETS.values():
        assert preset.weights in registries.weights
