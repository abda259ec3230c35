"""Reading rosinality checkpoints: keys and shapes, inferred settings, files, latent_avg."""

from __future__ import annotations

import argparse
import sys

import pytest
import torch

from soundguide.core.errors import CheckpointError
from soundguide.generators.stylegan2 import (
    StyleGAN2Generator,
    infer_stylegan2_config,
    load_stylegan2,
)
from tests.generators.stylegan2.helpers import manifest, random_state_dict, wplus_for


@pytest.mark.parametrize("size", [256, 1024])
def test_a_state_dict_built_from_the_manifest_loads_strictly(size: int) -> None:
    state = random_state_dict(manifest(size))
    g = load_stylegan2(state)
    assert (g.size, g.style_dim, g.n_mlp, g.channel_multiplier) == (size, 512, 8, 2)
    loaded = g.state_dict()
    assert list(loaded) == list(state)
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    assert not any(p.requires_grad for p in g.parameters())
    assert g.latent_avg is None


@pytest.mark.parametrize(
    ("size", "cm", "n_mlp", "style_dim"),
    [(8, None, 1, 16), (32, None, 8, 512), (64, 1, 3, 32), (128, 4, 2, 64), (1024, 2, 8, 512)],
)
def test_config_is_inferred_from_tensor_shapes(
    size: int, cm: int | None, n_mlp: int, style_dim: int
) -> None:
    with torch.device("meta"):
        g = StyleGAN2Generator(size, style_dim, n_mlp, cm or 2)
    found = infer_stylegan2_config(g.state_dict())
    assert found == {"size": size, "style_dim": style_dim, "n_mlp": n_mlp, "channel_multiplier": cm}


def test_load_infers_every_setting(pair64) -> None:
    ref, _ = pair64
    g = load_stylegan2(ref.state_dict())
    assert (g.size, g.style_dim, g.n_mlp, g.channel_multiplier, g.num_layers) == (64, 32, 2, 1, 10)


def test_channel_multiplier_is_free_for_small_generators(pair) -> None:
    ref, _ = pair
    assert load_stylegan2(ref.state_dict()).channel_multiplier == 2
    assert load_stylegan2(ref.state_dict(), channel_multiplier=1).channel_multiplier == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": 1024}, r"checkpoint is 64 px \(10 layers\), config says 1024"),
        ({"channel_multiplier": 2}, r"checkpoint has channel multiplier 1, config says 2"),
        ({"n_mlp": 8}, r"checkpoint has 2 mapping layers \(n_mlp\), config says 8"),
        ({"style_dim": 512}, r"checkpoint has style_dim 32, config says 512"),
    ],
)
def test_settings_that_disagree_with_the_checkpoint_are_named(pair64, kwargs, message) -> None:
    ref, _ = pair64
    with pytest.raises(CheckpointError, match=message) as info:
        load_stylegan2(ref.state_dict(), **kwargs)
    assert "\n" not in str(info.value)


def test_matching_settings_are_accepted(pair64) -> None:
    ref, _ = pair64
    g = load_stylegan2(ref.state_dict(), size=64, channel_multiplier=1, n_mlp=2, style_dim=32)
    assert g.size == 64


def test_a_state_dict_of_another_network_names_a_missing_key() -> None:
    state = {"conv.weight": torch.zeros(3, 3, 3, 3), "fc.bias": torch.zeros(10)}
    with pytest.raises(CheckpointError, match=r"not a StyleGAN2 .*'input\.input'") as info:
        load_stylegan2(state)
    assert "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match=r"key 'input\.input' is missing"):
        load_stylegan2({"g_ema": state})


def test_a_truncated_state_dict_lists_what_is_missing(pair) -> None:
    ref, _ = pair
    state = dict(ref.state_dict())
    del state["convs.1.noise.weight"], state["noises.noise_2"]
    state["convs.0.conv.weight"] = state["convs.0.conv.weight"][:, :8]
    with pytest.raises(CheckpointError, match=r"looks like 16 px.*missing.*noises\.noise_2.*wrong"):
        load_stylegan2(state)


def test_full_training_checkpoint_with_args_loads_from_a_file(pair, tmp_path) -> None:
    ref, ours = pair
    state = ref.state_dict()
    adam = torch.optim.Adam([torch.nn.Parameter(torch.zeros(3))])
    args = argparse.Namespace(size=16, channel_multiplier=2, latent=64, n_mlp=3, r1=10.0)
    path = tmp_path / "050000.pt"
    torch.save(
        {
            "g": state,
            "d": {"convs.0.0.weight": torch.zeros(1)},
            "g_ema": state,
            "g_optim": adam.state_dict(),
            "d_optim": adam.state_dict(),
            "args": args,
        },
        path,
    )
    g = load_stylegan2(path)
    assert (g.size, g.style_dim, g.n_mlp) == (16, 64, 3)
    w = wplus_for(g)
    with torch.no_grad():
        assert torch.equal(g.synthesize(w), ours.synthesize(w))


def test_converted_checkpoint_keeps_latent_avg(pair, tmp_path) -> None:
    ref, _ = pair
    latent_avg = torch.randn(64)
    path = tmp_path / "converted.pt"
    torch.save({"g_ema": ref.state_dict(), "latent_avg": latent_avg}, path)
    g = load_stylegan2(str(path))
    assert g.latent_avg is not None and g.latent_avg.shape == (1, 64)
    assert torch.equal(g.latent_avg[0], latent_avg)
    assert g.to(torch.float64).latent_avg.dtype == torch.float64


def test_latent_avg_is_the_generators_own_and_not_a_state_dict_entry(pair) -> None:
    ref, _ = pair
    latent_avg = torch.randn(64)
    g = load_stylegan2({"g_ema": ref.state_dict(), "latent_avg": latent_avg})
    latent_avg.zero_()  # the caller's tensor is not shared
    assert g.latent_avg.abs().sum() > 0
    assert "latent_avg" not in g.state_dict()  # the key contract is rosinality's g_ema


def test_bare_state_dict_has_no_latent_avg(pair) -> None:
    ref, _ = pair
    g = load_stylegan2(ref.state_dict())
    assert g.latent_avg is None
    assert not g.training


def test_missing_file_is_a_checkpoint_error(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_stylegan2(tmp_path / "nope.pt")


def mapped(path) -> bool:
    with open("/proc/self/maps") as fh:
        return any(line.rstrip().endswith(str(path)) for line in fh)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_a_loaded_checkpoint_file_is_no_longer_mapped(pair, tmp_path, monkeypatch) -> None:
    # the file is memory-mapped while it is read (so the weights are held once,
    # in the generator), and nothing the generator keeps may hold the mapping open
    from soundguide.core import checkpoints

    ref, ours = pair
    path = tmp_path / "g.pt"
    torch.save({"g_ema": ref.state_dict(), "latent_avg": torch.randn(64)}, path)
    seen = []
    real = checkpoints.load_checkpoint

    def spy(*args, **kwargs):
        obj = real(*args, **kwargs)
        seen.append((kwargs.get("mmap"), mapped(path)))
        return obj

    monkeypatch.setattr(checkpoints, "load_checkpoint", spy)
    g = load_stylegan2(path)
    assert seen == [(True, True)]  # mapped while read
    assert not mapped(path)  # and no longer
    assert g.latent_avg.untyped_storage().nbytes() == 64 * 4  # its own memory
    w = wplus_for(g)
    with torch.no_grad():  # the copies are intact
        assert torch.equal(g.synthesize(w), ours.synthesize(w))
