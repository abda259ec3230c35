"""Noise maps given to ``synthesize``: shapes, parity with the reference, gradients on every route."""

from __future__ import annotations

import copy

import pytest
import torch

from soundguide.core.errors import LatentError
from soundguide.core.interfaces import RunContext
from soundguide.generators.stylegan2 import LatentShapeError, StyledConv, load_stylegan2
from soundguide.generators.stylegan2.ops import modulated
from soundguide.plugins.stylegan2 import StyleGAN2
from tests.generators.stylegan2.helpers import make_reference, relative_error, wplus_for


def fresh_noise(g, n: int, seed: int = 0, dtype=torch.float32) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, *m.shape[1:], generator=gen, dtype=dtype) for m in g.noise_maps()]


def test_the_stored_maps_given_explicitly_change_nothing(pair) -> None:
    _, g = pair
    w = wplus_for(g)
    with torch.no_grad():
        assert torch.equal(g.synthesize(w, noise=g.noise_maps()), g.synthesize(w))


@pytest.mark.parametrize("batch", [1, 2])
def test_given_maps_match_the_reference(pair, batch) -> None:
    ref, g = pair
    w = wplus_for(g, n=2)
    noise = fresh_noise(g, batch, seed=3)
    with torch.no_grad():
        expected, _ = ref([w], input_is_latent=True, noise=noise)
        got = g.synthesize(w, noise=noise)
        stored = g.synthesize(w)
    assert relative_error(got, expected) < 1e-4
    assert relative_error(got, stored) > 1e-2  # the maps were used


def test_each_image_gets_its_own_map(pair) -> None:
    _, g = pair
    w = wplus_for(g, n=3)
    noise = fresh_noise(g, 3, seed=4)
    with torch.no_grad():
        batch = g.synthesize(w, noise=noise)
        for i in range(3):
            alone = g.synthesize(w[i : i + 1], noise=[m[i : i + 1] for m in noise])
            torch.testing.assert_close(batch[i : i + 1], alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("trainable", [False, True], ids=["frozen", "trainable"])
@pytest.mark.parametrize("batch", [1, 2])
def test_noise_gradients_of_the_fast_routes_equal_the_textbook_ones(
    pair8, batch, trainable, channels_last
) -> None:
    # frozen weights: FrozenStyledConv's own backward; trainable: plain autograd
    _, g0 = pair8
    fast = copy.deepcopy(g0).double().requires_grad_(trainable)
    fast.channels_last = channels_last
    slow = copy.deepcopy(fast)
    slow.fast = False
    w = wplus_for(fast, n=2).double()
    target = torch.randn(
        2, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )
    grads = {}
    for name, model in (("fast", fast), ("slow", slow)):
        noise = [m.requires_grad_() for m in fresh_noise(model, batch, seed=5, dtype=torch.float64)]
        wg = w.clone().requires_grad_()
        image = model.synthesize(wg, noise=noise)
        grads[name] = torch.autograd.grad((image - target).square().sum(), [wg, *noise])
    assert modulated.is_frozen(fast.conv1, torch.zeros(1, 1, 4, 4)) != trainable
    for got, expected in zip(grads["fast"], grads["slow"], strict=True):
        assert got.shape == expected.shape
        assert expected.abs().max() > 0
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize(
    ("upsample", "n", "noise_batch", "size"),
    [(True, 1, 1, 4), (True, 2, 2, 4), (False, 2, 1, 4), (False, 1, 1, 8), (False, 2, 2, 8)],
    ids=["up", "up-per-image", "shared", "modulated-weights", "modulated-weights-per-image"],
)
def test_the_frozen_styled_conv_passes_gradcheck_for_the_noise_term(
    upsample, n, noise_batch, size
) -> None:
    torch.manual_seed(0)
    conv = StyledConv(3, 2, 3, 4, upsample=upsample).double().requires_grad_(False).conv
    out_size = 2 * size if upsample else size
    x = torch.randn(n, 3, size, size, dtype=torch.float64, requires_grad=True)
    s = torch.randn(n, 3, dtype=torch.float64, requires_grad=True)
    d = torch.rand(n, 2, dtype=torch.float64).add_(0.5).requires_grad_()
    noise_term = torch.randn(noise_batch, 1, out_size, out_size, dtype=torch.float64)
    noise_term.requires_grad_()
    bias = torch.randn(2, dtype=torch.float64)

    def f(x, s, d, noise_term):
        return modulated.FrozenStyledConv.apply(x, s, d, conv, noise_term, bias)

    assert torch.autograd.gradcheck(f, (x, s, d, noise_term))


def test_noise_gradients_through_the_winograd_layer() -> None:
    # a 256-channel 64 px layer runs as a Winograd convolution on the CPU
    torch.manual_seed(0)
    layer = StyledConv(256, 256, 3, 8).double().requires_grad_(False)
    with torch.no_grad():
        layer.noise.weight.fill_(0.7)
    x = torch.randn(1, 256, 64, 64, dtype=torch.float64)
    latent = torch.randn(1, 8, dtype=torch.float64)
    assert modulated.use_winograd(layer.conv, x)
    noise = torch.randn(1, 1, 64, 64, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(1, 256, 64, 64, dtype=torch.float64)
    (fast,) = torch.autograd.grad(layer(x, latent, noise), noise, grad)
    layer.conv.fast = False
    (slow,) = torch.autograd.grad(layer(x, latent, noise), noise, grad)
    torch.testing.assert_close(fast, slow, rtol=1e-9, atol=1e-9)


# -- bad maps ------------------------------------------------------------------------------------


def test_wrong_noise_is_refused_with_what_was_expected(pair) -> None:
    _, g = pair  # 16 px: maps of 4, 8, 8, 16, 16 px
    w = wplus_for(g, n=2)
    good = fresh_noise(g, 2)
    with pytest.raises(LatentShapeError, match="takes 5 noise maps, got 4"):
        g.synthesize(w, noise=good[:4])
    with pytest.raises(LatentShapeError, match="must be a list of 5 maps, got Tensor"):
        g.synthesize(w, noise=good[0])
    bad = [*good[:2], torch.zeros(2, 1, 16, 16), *good[3:]]
    with pytest.raises(
        LatentShapeError, match=r"noise map 2 must have shape \(1 or 2, 1, 8, 8\), got \(2, 1, 16"
    ):
        g.synthesize(w, noise=bad)
    bad = [*good[:4], torch.zeros(3, 1, 16, 16)]
    with pytest.raises(LatentShapeError, match=r"noise map 4 .* got \(3, 1, 16, 16\)"):
        g.synthesize(w, noise=bad)
    bad = [torch.zeros(2, 1, 4, 4, dtype=torch.int64), *good[1:]]
    with pytest.raises(LatentShapeError, match="noise map 0 must be a float tensor"):
        g.synthesize(w, noise=bad)
    bad = [torch.zeros(2, 1, 4, 4, device="meta"), *good[1:]]
    with pytest.raises(LatentError, match="noise map 0 is on meta but the generator is on cpu"):
        g.synthesize(w, noise=bad)


# -- the plugin's noise_maps / use_noise -------------------------------------------------------


@pytest.fixture(scope="module")
def plugin(tmp_path_factory) -> StyleGAN2:
    ref = make_reference(16, 32, 2, 1, seed=3)
    path = tmp_path_factory.mktemp("ckpt") / "g.pt"
    torch.save({"g_ema": ref.state_dict()}, path)
    config = StyleGAN2.Config(checkpoint=path, mean_samples=16)
    return StyleGAN2(config, RunContext(cache_dir=tmp_path_factory.mktemp("cache")))


def test_the_plugin_synthesizes_with_the_maps_it_is_given(plugin) -> None:
    stored = plugin.model.noise_maps()
    assert [tuple(m.shape) for m in plugin.noise_maps()] == [tuple(m.shape) for m in stored]
    assert all(a is b for a, b in zip(plugin.noise_maps(), stored, strict=True))
    w = wplus_for(plugin.model, n=2)
    with torch.no_grad():
        before = plugin.synthesize(w)
        noise = fresh_noise(plugin.model, 2, seed=7)
        plugin.use_noise(noise)
        try:
            assert all(a is b for a, b in zip(plugin.noise_maps(), noise, strict=True))
            got = plugin.synthesize(w)
            assert torch.equal(got, plugin.model.synthesize(w, noise=noise))
            assert not torch.allclose(got, before)
        finally:
            plugin.use_noise(None)
        assert torch.equal(plugin.synthesize(w), before)
        plugin.use_noise(plugin.noise_maps())  # the stored maps: still the buffers
        assert plugin._noise is None


def test_the_plugin_passes_gradients_to_its_maps(plugin) -> None:
    noise = [m.requires_grad_() for m in fresh_noise(plugin.model, 1, seed=8)]
    plugin.use_noise(noise)
    try:
        plugin.synthesize(wplus_for(plugin.model, n=2)).square().sum().backward()
    finally:
        plugin.use_noise(None)
    assert all(m.grad is not None and m.grad.abs().sum() > 0 for m in noise)


def test_the_plugin_refuses_maps_of_the_wrong_shape(plugin) -> None:
    noise = fresh_noise(plugin.model, 1)
    with pytest.raises(LatentShapeError, match=r"noise map 1 must have shape \(n, 1, 8, 8\)"):
        plugin.use_noise([noise[0], noise[0], *noise[2:]])
    assert plugin._noise is None


def test_a_loaded_generator_has_one_map_per_styled_convolution() -> None:
    g = load_stylegan2(make_reference(32, 16, 1, 1).state_dict())
    assert g.num_noise == 7 == len(g.noise_maps()) == len(g.convs) + 1
    assert [m.shape[-1] for m in g.noise_maps()] == [4, 8, 8, 16, 16, 32, 32]
