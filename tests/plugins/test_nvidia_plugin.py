from __future__ import annotations

import json

import pytest
import torch

import soundguide
from soundguide.core.config import load_config
from soundguide.core.engine import Editor
from soundguide.core.errors import CheckpointError, ConfigError, LatentError
from soundguide.inversion.lpips import load_lpips
from soundguide.inversion.projection import ProjectionSettings, project
from soundguide.plugins.nvidia import PRESETS
from tests.generators.nvidia import ada_reference as ada
from tests.generators.nvidia import sg3_reference as sg3

# config T at 16 px (as tests/generators/nvidia/test_stylegan3.py's T16)
SG3_T16 = dict(
    z_dim=8, c_dim=0, w_dim=8, img_resolution=16, img_channels=3,
    mapping_kwargs=dict(num_layers=2), channel_base=64, channel_max=8,
    num_layers=4, num_critical=2, margin_size=2, num_fp16_res=4, conv_clamp=256,
)  # fmt: skip


@pytest.fixture(scope="module")
def pickles(tmp_path_factory):
    folder = tmp_path_factory.mktemp("nvidia")
    ada_g = ada.make_generator(img_resolution=16, seed=0)
    ada.write_pickle(folder / "network-snapshot-000100.pkl", ada_g)
    cond = ada.make_generator(img_resolution=16, c_dim=4, seed=1)
    ada.write_pickle(folder / "conditional.pkl", cond)
    torch.manual_seed(0)
    sg3_g = sg3.randomize(sg3.Generator(**SG3_T16), seed=1)
    sg3.write_snapshot(folder / "stylegan3-t.pkl", sg3_g)
    return {
        "ada": (folder / "network-snapshot-000100.pkl", ada_g),
        "conditional": (folder / "conditional.pkl", cond),
        "sg3": (folder / "stylegan3-t.pkl", sg3_g),
    }


CONFIG = """
[generator]
type = "nvidia"
checkpoint = "{ckpt}"
{extra}

[[guidance]]
type = "toy-target"
dim = 16

[[regularizer]]
type = "latent_l2"
weight = 0.01

[optimization]
steps = 3
seed = [1, 2]

[output]
dir = "out"
"""


def build(registries, write_config, path, extra=""):
    cfg = load_config(write_config(CONFIG.format(ckpt=path, extra=extra)), registries)
    editor = Editor(cfg, registries, progress=False)
    editor.prepare()
    return editor.generator


@pytest.mark.parametrize(
    ("name", "family", "layers", "dim"),
    [("ada", "stylegan2-ada", 6, 32), ("sg3", "stylegan3", 6, 8)],
)
def test_dispatch_and_images_equal_the_models(
    registries, write_config, pickles, name, family, layers, dim
):
    path, reference = pickles[name]
    gen = build(registries, write_config, path)
    assert gen.family == family
    assert (gen.num_layers, gen.latent_dim, gen.resolution) == (layers, dim, 16)
    torch.testing.assert_close(gen.mean_latent(), reference.mapping.w_avg.expand(1, layers, dim))
    w = gen.sample_latent(2, 0.7, torch.Generator().manual_seed(3))
    z = torch.randn(2, reference.z_dim, generator=torch.Generator().manual_seed(3))
    expected_w = reference.mapping(z, None, truncation_psi=0.7)
    torch.testing.assert_close(w, expected_w, rtol=1e-5, atol=1e-5)
    kwargs = {"noise_mode": "const", "force_fp32": True} if name == "ada" else {}
    expected = reference.synthesis(w, **kwargs)
    torch.testing.assert_close(gen.synthesize(w), expected, rtol=1e-4, atol=1e-4)
    assert gen.files() == [path]


def test_truncation_cutoff_follows_nvidias(registries, write_config, pickles):
    path, reference = pickles["ada"]
    gen = build(registries, write_config, path, "truncation_cutoff = 2")
    w = gen.sample_latent(1, 0.5, torch.Generator().manual_seed(4))
    z = torch.randn(1, 16, generator=torch.Generator().manual_seed(4))
    expected = reference.mapping(z, None, truncation_psi=0.5, truncation_cutoff=2)
    torch.testing.assert_close(w, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(w[:, 0], w[:, 3])


@pytest.mark.parametrize("name", ["ada", "sg3"])
def test_an_edit_end_to_end_from_toml(registries, write_config, pickles, tmp_path, name):
    path, _ = pickles[name]
    cfg = load_config(write_config(CONFIG.format(ckpt=path, extra="")), registries)
    result = soundguide.edit(cfg, registries=registries, progress=False)
    assert result.ok
    assert result.edited_image.shape == (2, 3, 16, 16)
    assert not torch.equal(result.edited_latent, result.source_latent)
    manifest = json.loads((tmp_path / "out" / "run.json").read_text())
    assert str(path) in {f["path"] for f in manifest["files"]}


def test_conditional_network_takes_class_from_toml(registries, write_config, pickles):
    path, reference = pickles["conditional"]
    gen = build(registries, write_config, path, "class = 2")
    assert gen.config.class_index == 2
    w = gen.sample_latent(1, 1.0, torch.Generator().manual_seed(5))
    z = torch.randn(1, 16, generator=torch.Generator().manual_seed(5))
    c = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    torch.testing.assert_close(w, reference.mapping(z, c), rtol=1e-5, atol=1e-5)
    other = reference.mapping(z, torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    assert not torch.allclose(w, other)


@pytest.mark.parametrize(
    ("name", "extra", "match"),
    [
        ("conditional", "", r"class-conditional \(4 classes\): set class = 0\.\.3"),
        ("conditional", "class = 4", r"class = 4 is out of range: .* has 4 classes \(0\.\.3\)"),
        ("ada", "class = 0", r"class = 0, but network-snapshot-000100\.pkl is unconditional"),
    ],
)
def test_class_is_checked_against_the_network(
    registries, write_config, pickles, name, extra, match
):
    with pytest.raises(ConfigError, match=match) as info:
        build(registries, write_config, pickles[name][0], extra)
    assert "\n" not in str(info.value)


def test_negative_class_is_a_config_error(registries, write_config, pickles):
    text = CONFIG.format(ckpt=pickles["conditional"][0], extra="class = -1")
    with pytest.raises(ConfigError, match=r"class.*greater than or equal to 0"):
        load_config(write_config(text), registries)


def test_an_unsupported_pickle_is_a_one_line_error_naming_it(
    registries, write_config, pickles, tmp_path
):
    # a G_ema of another class: write a persistence-style pickle whose G_ema is a MappingNetwork
    other = tmp_path / "mapping.pkl"
    mapping = ada.make_generator(img_resolution=16).mapping
    mapping.img_resolution = 16
    ada.write_pickle(other, mapping)
    with pytest.raises(CheckpointError, match=r"G_ema is a MappingNetwork, not NVIDIA") as info:
        build(registries, write_config, other)
    assert str(other) in str(info.value) and "\n" not in str(info.value)

    # a StyleGAN3 option the model refuses
    g = sg3.Generator(**{**SG3_T16, "magnitude_ema_beta": 0.9})
    g._init_kwargs["use_noise"] = True
    refused = tmp_path / "refused.pkl"
    sg3.write_snapshot(refused, sg3.randomize(g, seed=2))
    with pytest.raises(CheckpointError, match=r"unsupported NVIDIA pickle .*use_noise") as info:
        build(registries, write_config, refused)
    assert "\n" not in str(info.value)


def test_ada_noise_maps_replace_noise_const(pickles):
    path, reference = pickles["ada"]
    from soundguide.plugins.nvidia import load_nvidia_generator

    _, model = load_nvidia_generator(path)
    synthesis = model.synthesis
    fixed = synthesis.noise_maps()
    assert [m.shape[-1] for m in fixed] == [4, 8, 8, 16, 16]
    ws = torch.randn(2, 6, 32, generator=torch.Generator().manual_seed(6))
    # the stored maps given explicitly: the same images as noise_mode='const'
    torch.testing.assert_close(synthesis(ws, noise=fixed), synthesis(ws))
    # zero maps: noise_mode='none'
    zeros = [torch.zeros_like(m) for m in fixed]
    torch.testing.assert_close(synthesis(ws, noise=zeros), synthesis(ws, noise_mode="none"))
    # one map per image, with gradients reaching the maps
    maps = [torch.randn(2, 1, m.shape[-1], m.shape[-1]).requires_grad_() for m in fixed]
    images = synthesis(ws, noise=maps)
    assert not torch.allclose(images, synthesis(ws))
    images.square().sum().backward()
    assert all(m.grad is not None and m.grad.abs().sum() > 0 for m in maps)
    with pytest.raises(LatentError, match=r"takes 5 noise maps, got 4"):
        synthesis(ws, noise=fixed[:4])
    with pytest.raises(LatentError, match=r"noise map 1 must be .*\(1 or 2, 1, 8, 8\)"):
        synthesis(ws, noise=[fixed[0], torch.zeros(3, 1, 8, 8), *fixed[2:]])


def test_generator_noise_interface(registries, write_config, pickles):
    ada_gen = build(registries, write_config, pickles["ada"][0])
    fixed = ada_gen.noise_maps()
    w = ada_gen.mean_latent()
    before = ada_gen.synthesize(w)
    ada_gen.use_noise([torch.randn_like(m) for m in fixed])
    assert not torch.allclose(ada_gen.synthesize(w), before)
    ada_gen.use_noise(fixed)  # the pickle's own maps again
    assert ada_gen._noise is None
    torch.testing.assert_close(ada_gen.synthesize(w), before)
    assert build(registries, write_config, pickles["sg3"][0]).noise_maps() == []


@pytest.mark.parametrize(("name", "tuned"), [("ada", 5), ("sg3", 0)])
def test_projection_works_on_each(registries, write_config, pickles, name, tuned):
    gen = build(registries, write_config, pickles[name][0])
    with torch.no_grad():
        target = gen.synthesize(gen.sample_latent(1, 0.5, torch.Generator().manual_seed(7)))
    settings = ProjectionSettings(steps=4, mean_samples=64, noise_regularize=10.0)
    result = project(target, gen, load_lpips(None), settings=settings, progress=False)
    assert result.latent.shape == (1, gen.num_layers, gen.latent_dim)
    assert torch.isfinite(result.latent).all()
    assert len(result.history["total"]) == 4
    if tuned:
        assert [tuple(m.shape) for m in result.noise][0] == (1, 1, 4, 4)
        assert len(result.noise) == tuned
    else:
        assert result.noise is None
    assert gen.noise_maps() == [] or gen._noise is None  # the generator's own noise again


def test_presets_are_known_weights_with_url_and_licence():
    registries = soundguide.core.plugins.load_registries(entry_points=False)
    for name, preset in PRESETS.items():
        entry = next(e for e in registries.weights if e.name == name)
        assert entry.url == preset.url and entry.url.startswith("https://")
        assert "Nvidia Source Code License" in entry.license
    assert PRESETS["stylegan2-ada-cifar10"].resolution == 32
    assert PRESETS["stylegan3-r-afhqv2-512"].url.endswith("/stylegan3-r-afhqv2-512x512.pkl")


def test_presets_listed_by_the_cli(capsys):
    from soundguide.cli import main

    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    assert "stylegan2-ada-ffhq" in out
    assert "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/ffhq.pkl" in out
    assert "stylegan3-t-ffhqu-256x256.pkl" in out and "Nvidia Source Code License-NC" in out


def test_preset_or_checkpoint_is_required(registries, write_config):
    text = CONFIG.replace('checkpoint = "{ckpt}"\n', "").format(extra="")
    with pytest.raises(ConfigError, match=r"generator: set preset"):
        load_config(write_config(text), registries)


def test_translate_and_rotate_move_a_stylegan3_as_nvidias_gen_images(
    registries, write_config, pickles
):
    import numpy as np

    path, reference = pickles["sg3"]
    gen = build(registries, write_config, path, "translate = [0.125, -0.25]\nrotate = 30")
    w = gen.mean_latent()
    transform = reference.synthesis.input.transform
    with torch.no_grad():
        still = reference.synthesis(w)
        saved = transform.clone()
        try:  # as NVIDIA's gen_images.py moves its G
            matrix = np.linalg.inv(sg3.make_transform((0.125, -0.25), 30))
            transform.copy_(torch.from_numpy(matrix))
            expected = reference.synthesis(w)
        finally:
            transform.copy_(saved)
    torch.testing.assert_close(gen.synthesize(w), expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(expected, still, atol=1e-3)


def test_translate_is_refused_for_a_stylegan2_ada(registries, write_config, pickles):
    with pytest.raises(ConfigError, match="translate and rotate move a StyleGAN3's input"):
        build(registries, write_config, pickles["ada"][0], "rotate = 10")
