"""Every built-in plugin, from its default config with tiny weights.

Each one is built by the engine from nothing but its default config (known
weights found in their cache places, as after ``soundguide weights download``)
plus the fields a config must give (a file, a prompt); its loss term is finite
and has a finite, non-zero gradient with respect to the latent, and its config
survives a round trip through plain data (what ``config show`` prints and a
TOML file holds). A new built-in without a case here fails the first test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from soundguide.core.config import config_from_dict
from soundguide.core.engine import Editor
from soundguide.core.plugins import load_registries
from soundguide.generators.stylegan2 import StyleGAN2Generator
from tests import toy_plugins
from tests.factories import random_arcface, save_random_soundclip, save_tiny_clip
from tests.generators.nvidia import ada_reference

BUILTINS = load_registries(entry_points=False)
BUILT_IN = sorted(
    (registry.kind, name)
    for registry in (BUILTINS.generators, BUILTINS.guidances, BUILTINS.regularizers)
    for name in registry.names()
)

KNOWN = {"ViT-B/32": "clip", "soundclip-resnet18-57": "soundclip", "arcface-ir-se50": "arcface"}
"""The known weights the built-ins' defaults name -> the tiny file standing in for each."""


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        generator = StyleGAN2Generator(16, style_dim=32, n_mlp=2, channel_multiplier=1)
    torch.save({"g_ema": generator.state_dict()}, folder / "g.pt")
    ada_reference.write_pickle(folder / "g.pkl", ada_reference.make_generator(img_resolution=16))
    torch.save(random_arcface(0).state_dict(), folder / "arcface.pth")
    rate = 44100
    t = np.arange(2 * rate) / rate
    sf.write(folder / "tone.wav", 0.3 * np.sin(2 * np.pi * 440 * t) * np.exp(-t), rate)
    pixels = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "picture.png")
    return {
        "stylegan2": folder / "g.pt",
        "nvidia": folder / "g.pkl",
        "clip": save_tiny_clip(folder / "clip.pt", seed=0),
        "soundclip": save_random_soundclip(folder / "soundclip.pt", embed_dim=32, seed=1),
        "arcface": folder / "arcface.pth",
        "tone": folder / "tone.wav",
        "picture": folder / "picture.png",
    }


@pytest.fixture
def registries(files, monkeypatch, tmp_path):
    """Built-ins and the toy plugins, the defaults' known weights already in their cache."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # CLIP's cache is ~/.cache/clip
    registries = load_registries(entry_points=False, plugins=[toy_plugins])
    for name, stand_in in KNOWN.items():
        local = registries.weights.local_path(name)
        local.parent.mkdir(parents=True, exist_ok=True)
        local.symlink_to(files[stand_in])
    return registries


def required(kind: str, name: str, files: dict) -> dict:
    """The fields a config of this built-in must give; everything else is its default."""
    return {
        ("generator", "stylegan2"): {"checkpoint": str(files["stylegan2"]), "mean_samples": 64},
        ("generator", "nvidia"): {"checkpoint": str(files["nvidia"])},
        ("guidance", "audio"): {"path": str(files["tone"])},
        ("guidance", "image"): {"path": str(files["picture"])},
        ("guidance", "text"): {"prompt": "a burning forest"},
        ("regularizer", "identity"): {},
        ("regularizer", "latent_l2"): {},
        ("regularizer", "temporal"): {},
    }[(kind, name)]


def run_config(kind: str, name: str, files: dict) -> dict:
    section = {"type": name, **required(kind, name, files)}
    data = {
        # 64 px toy images: the identity term pools them to 256 px and crops a face
        "generator": {"type": "toy", "size": 64},
        "guidance": [{"type": "toy-target"}],
        "optimization": {"steps": 1, "seed": 0},
    }
    if (kind, name) == ("regularizer", "temporal"):
        data["optimization"]["seed"] = [0, 1]  # a sequence term: two frames to compare
    if kind == "generator":
        data["generator"] = section
    elif kind == "guidance":
        data["guidance"] = [section]
    else:
        data["regularizer"] = [section]
    return data


def test_the_sweep_covers_every_builtin(files):
    for kind, name in BUILT_IN:
        assert isinstance(required(kind, name, files), dict)  # KeyError: a built-in without a case
    assert {k for k, _ in BUILT_IN} == {"generator", "guidance", "regularizer"}


@pytest.mark.parametrize(("kind", "name"), BUILT_IN, ids=[f"{k}-{n}" for k, n in BUILT_IN])
def test_builds_from_defaults_with_a_finite_loss_and_a_gradient(kind, name, files, registries):
    config = config_from_dict(run_config(kind, name, files), registries)
    editor = Editor(config, registries, progress=False)
    editor.prepare()
    with torch.random.fork_rng():
        torch.manual_seed(1)  # away from the source, where the regularizers are 0 with no gradient
        w = (editor.w0 + 0.3 * torch.randn_like(editor.w0)).requires_grad_()
    terms = editor.losses(w)
    label = "toy-target" if kind == "generator" else name
    term = terms[label]
    assert term.shape == (w.shape[0],) and torch.isfinite(term).all()
    (grad,) = torch.autograd.grad(term.sum(), w)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    if kind != "generator":
        assert term.sum().item() != 0.0


@pytest.mark.parametrize(("kind", "name"), BUILT_IN, ids=[f"{k}-{n}" for k, n in BUILT_IN])
def test_config_round_trips_through_plain_data(kind, name, files, registries):
    config = config_from_dict(run_config(kind, name, files), registries)
    dumped = config.model_dump(mode="json")
    again = config_from_dict(dumped, registries)
    assert again == config
    assert again.model_dump(mode="json") == dumped
    section = {
        "generator": dumped["generator"],
        "guidance": dumped["guidance"][0],
        "regularizer": (dumped["regularizer"] or [{}])[0],
    }[kind]
    plugin = {
        "generator": registries.generators,
        "guidance": registries.guidances,
        "regularizer": registries.regularizers,
    }[kind].get(name)
    defaults = plugin.Config(**required(kind, name, files)).model_dump(mode="json")
    assert {k: section[k] for k in defaults} == defaults  # every default kept as it is
    assert all(not isinstance(v, float) or math.isfinite(v) for v in section.values())
