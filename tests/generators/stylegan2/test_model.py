"""The architecture (model.py): the key contract, parity with rosinality, behaviour, bad input.

Most tests run the default fast routes; the textbook forwards are checked
against the reference and against the fast routes here, and op by op in
test_ops.py.
"""

from __future__ import annotations

import copy
import json
import pickle

import pytest
import torch

from soundguide.core.errors import ConfigError, LatentError, SoundguideError
from soundguide.generators.stylegan2 import (
    LatentShapeError,
    StyledConv,
    StyleGAN2Generator,
    load_stylegan2,
)
from soundguide.generators.stylegan2.ops import cache
from tests.generators.stylegan2.helpers import (
    DATA,
    MANIFESTS,
    SHARED,
    make_reference,
    manifest,
    relative_error,
    wplus_for,
)

# -- the checkpoint contract: keys and shapes ----------------------------------------------


@pytest.mark.parametrize("size", [256, 1024])
def test_state_dict_keys_and_shapes_match_the_rosinality_manifest(size: int) -> None:
    g = StyleGAN2Generator(size, 512, 8, 2, init=False)
    got = [(k, tuple(v.shape), str(v.dtype)) for k, v in g.state_dict().items()]
    assert got == manifest(size)
    assert g.num_layers == {256: 14, 1024: 18}[size]


@pytest.mark.skipif(not SHARED.exists(), reason="no ../shared/reference in this checkout")
@pytest.mark.parametrize("size", [256, 1024])
def test_bundled_manifests_equal_the_shared_ones(size: int) -> None:
    name = MANIFESTS[size]
    assert json.loads((DATA / name).read_text()) == json.loads((SHARED / name).read_text())


def test_the_reference_has_the_same_keys_as_ours(pair64) -> None:
    ref, _ = pair64
    ours = StyleGAN2Generator(64, 32, 2, 1, init=False).state_dict()
    assert [(k, v.shape) for k, v in ours.items()] == [
        (k, v.shape) for k, v in ref.state_dict().items()
    ]


def test_unsupported_sizes_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="power of two >= 8, got 100"):
        StyleGAN2Generator(100)
    with pytest.raises(ConfigError, match="power of two"):
        StyleGAN2Generator(4)


# -- parity with the rosinality reference --------------------------------------------------


@pytest.mark.parametrize("fixture", ["pair", "pair64"])
def test_wplus_synthesis_matches_the_reference(fixture, request) -> None:
    ref, g = request.getfixturevalue(fixture)
    w = wplus_for(g)
    with torch.no_grad():
        expected, _ = ref([w], input_is_latent=True, randomize_noise=False)
        got = g.synthesize(w)
    assert got.shape == (2, 3, g.size, g.size)
    assert relative_error(got, expected) < 1e-4


@pytest.mark.parametrize("fixture", ["pair", "pair64"])
def test_the_textbook_forwards_alone_match_the_reference(fixture, request) -> None:
    # model.py without ops/modulated.py: the specification by itself
    ref, g = request.getfixturevalue(fixture)
    g = copy.deepcopy(g)
    g.fast = False
    w = wplus_for(g).requires_grad_()
    expected, _ = ref([w], input_is_latent=True, randomize_noise=False)
    (expected_grad,) = torch.autograd.grad(expected.square().mean(), w)
    got = g.synthesize(w)
    (got_grad,) = torch.autograd.grad(got.square().mean(), w)
    assert relative_error(got, expected) < 1e-4
    assert ((got_grad - expected_grad).norm() / expected_grad.norm()).item() < 1e-4
    assert not any(cache.names(m) for m in g.modules())  # nothing derived on this path


def test_truncation_target_must_broadcast() -> None:
    from soundguide.generators.stylegan2 import LatentShapeError, StyleGAN2Generator

    w = torch.ones(2, 5, 8)
    out = StyleGAN2Generator.truncate(w, 0.5, torch.zeros(1, 8))
    assert out.shape == (2, 5, 8) and torch.equal(out, torch.full_like(w, 0.5))
    assert StyleGAN2Generator.truncate(w, 0.5, torch.zeros(5, 1)).shape == (2, 5, 8)
    with pytest.raises(
        LatentShapeError, match=r"shape \(3, 8\) does not broadcast to .*\(2, 5, 8\)"
    ):
        StyleGAN2Generator.truncate(w, 0.5, torch.zeros(3, 8))


def test_z_mapping_truncation_synthesis_matches_the_reference(pair64) -> None:
    ref, g = pair64
    z = torch.randn(2, g.style_dim, generator=torch.Generator().manual_seed(5))
    target = g.mean_latent(256, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, _ = ref([z], truncation=0.7, truncation_latent=target, randomize_noise=False)
        w = g.truncate(g.mapping(z), 0.7, target)
        assert relative_error(w, ref.style(z)) > 0  # truncation did something
        got = g.synthesize(w[:, None, :].expand(-1, g.num_layers, -1))
    assert relative_error(got, expected) < 1e-4


def test_mapping_matches_the_reference(pair) -> None:
    ref, g = pair
    z = torch.randn(4, g.style_dim)
    with torch.no_grad():
        assert relative_error(g.mapping(z), ref.style(z)) < 1e-5


def test_gradient_with_respect_to_wplus_matches_the_reference(pair8) -> None:
    ref, g = pair8

    def grads(model, dtype: torch.dtype, ours: bool) -> torch.Tensor:
        w = wplus_for(g).to(dtype).requires_grad_()
        if ours:
            out = model.synthesize(w)
        else:
            out = model([w], input_is_latent=True, randomize_noise=False)[0]
        out.square().mean().backward()
        return w.grad.double()

    def error(a: torch.Tensor, b: torch.Tensor) -> float:
        return ((a - b).norm() / b.norm()).item()

    truth = grads(copy.deepcopy(ref).double(), torch.float64, ours=False)
    assert error(grads(copy.deepcopy(g).double(), torch.float64, ours=True), truth) < 1e-10
    ref32, ours32 = grads(ref, torch.float32, ours=False), grads(g, torch.float32, ours=True)
    # float32 rounding of the reference's weight modulation costs it ~1e-4;
    # modulating activations is more accurate, so compare both with float64
    assert error(ours32, truth) < 1e-5
    assert error(ours32, ref32) < 2 * error(ref32, truth) + 1e-5


# -- behaviour ------------------------------------------------------------------------------


def test_gradient_flows_to_every_wplus_layer_and_not_to_weights(pair) -> None:
    _, g = pair
    w = wplus_for(g).requires_grad_()
    g.synthesize(w).square().mean().backward()
    assert w.grad is not None and torch.isfinite(w.grad).all()
    per_layer = w.grad.abs().sum(dim=(0, 2))
    assert (per_layer > 0).all(), per_layer
    assert all(p.grad is None for p in g.parameters())


def test_weights_get_gradients_when_they_require_them(pair) -> None:
    # caches are bypassed while training, so autograd sees the weight scaling
    ref, _ = pair
    g = load_stylegan2(ref.state_dict()).requires_grad_(True)
    z = torch.randn(1, g.style_dim)
    wplus = g.mapping(z)[:, None, :].expand(-1, g.num_layers, -1)
    g.synthesize(wplus).square().mean().backward()
    for name in ["convs.0.conv.weight", "convs.1.conv.modulation.weight", "style.1.weight"]:
        grad = g.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_synthesis_is_deterministic(pair) -> None:
    _, g = pair
    w = wplus_for(g)
    with torch.no_grad():
        assert torch.equal(g.synthesize(w), g.synthesize(w))


def test_each_batch_item_equals_the_same_latent_alone(pair) -> None:
    _, g = pair
    w = wplus_for(g, n=3)
    with torch.no_grad():
        batch = g.synthesize(w)
        for i in range(3):
            alone = g.synthesize(w[i : i + 1])
            assert relative_error(batch[i : i + 1], alone) < 1e-4


def test_fast_path_equals_the_textbook_path(pair) -> None:
    _, g = pair
    w = wplus_for(g)
    w_fast = w.clone().requires_grad_()
    fast = g.synthesize(w_fast)
    fast.square().mean().backward()
    g.fast = False
    try:
        w_slow = w.clone().requires_grad_()
        slow = g.synthesize(w_slow)
        slow.square().mean().backward()
    finally:
        g.fast = True
    assert relative_error(fast, slow) < 1e-4
    # norm-relative: the textbook path's float32 gradient is off by ~3e-4 here
    assert ((w_fast.grad - w_slow.grad).norm() / w_slow.grad.norm()).item() < 1e-3


def test_winograd_option_gives_the_same_images_and_gradients(pair64) -> None:
    _, g = pair64
    assert g.winograd  # the default (the plugin's winograd = false turns it off)
    w = wplus_for(g, n=1)
    results = []
    for on in (False, True):
        g.winograd = on
        wi = w.clone().requires_grad_()
        image = g.synthesize(wi)
        image.square().mean().backward()
        results.append((image.detach(), wi.grad))
    layers = [m for m in g.modules() if isinstance(m, StyledConv)]
    assert any("winograd" in cache.names(m.conv) for m in layers)  # the option was exercised
    g.clear_cache()
    assert not any(cache.names(m) for m in g.modules())
    (plain, grad_plain), (wino, grad_wino) = results
    assert relative_error(wino, plain) < 1e-4
    assert ((grad_wino - grad_plain).norm() / grad_plain.norm()).item() < 1e-4


def test_channels_last_gives_the_same_images(pair) -> None:
    _, g = pair
    w = wplus_for(g)
    with torch.no_grad():
        plain = g.synthesize(w)
        g.channels_last = True
        try:
            cl = g.synthesize(w)
        finally:
            g.channels_last = False
    assert cl.is_contiguous()
    assert relative_error(cl, plain) < 1e-4


@pytest.mark.filterwarnings("ignore:precision='bf16' on a CPU")
def test_bf16_mode_runs_and_is_close(pair8) -> None:
    _, g = pair8
    w = wplus_for(g).requires_grad_()
    with torch.no_grad():
        fp32 = g.synthesize(w)
    bf16 = g.synthesize(w, precision="bf16")
    assert bf16.dtype == torch.float32 and bf16.shape == fp32.shape
    assert ((bf16 - fp32).abs().mean() / fp32.abs().mean()).item() < 0.05
    bf16.square().mean().backward()
    assert w.grad is not None and torch.isfinite(w.grad).all()


def test_caches_follow_new_weights(pair) -> None:
    ref, _ = pair
    g = load_stylegan2(ref.state_dict())
    w = wplus_for(g)
    with torch.no_grad():
        before = g.synthesize(w)
        other = make_reference(16, 64, 3, 2, seed=7).state_dict()
        g.load_state_dict(other)
        assert torch.equal(g.synthesize(w), load_stylegan2(other).synthesize(w))
        g.load_state_dict(ref.state_dict())
        assert torch.equal(g.synthesize(w), before)
        g.convs[0].conv.weight[:, :8].mul_(3)  # in-place edits are seen too
        changed = g.synthesize(w)
        assert not torch.allclose(changed, before)
        g.to_rgbs[0].conv.modulation.weight.mul_(0.5)
        assert not torch.allclose(g.synthesize(w), changed)
        changed = g.synthesize(w)
        assert not torch.allclose(changed, before)
        g.fast = False
        assert relative_error(changed, g.synthesize(w)) < 1e-4
        g.fast = True


def test_caches_follow_a_dtype_change_and_back(pair) -> None:
    # what nn.Module._apply's override used to guarantee by clearing the caches:
    # after .double() / .to(dtype) every derived tensor is of the new weights
    ref, _ = pair
    g = load_stylegan2(ref.state_dict())
    w = wplus_for(g)
    with torch.no_grad():
        before = g.synthesize(w)
        assert any(cache.names(m) for m in g.modules())
        g.double()
        # the caches of the float32 weights went with them, before any call
        assert not any(cache.names(m) for m in g.modules())
        got = g.synthesize(w.double())
        assert got.dtype == torch.float64
        fresh = load_stylegan2(ref.state_dict()).double()
        assert torch.equal(got, fresh.synthesize(w.double()))
        g.fast = False
        assert relative_error(got, g.synthesize(w.double())) < 1e-10
        g.fast = True
        assert torch.equal(g.to(torch.float32).synthesize(w), before)


def test_caches_follow_weights_given_new_data(pair) -> None:
    ref, _ = pair
    g = load_stylegan2(ref.state_dict())
    w = wplus_for(g)
    conv = g.convs[1].conv
    with torch.no_grad():
        before = g.synthesize(w)
        assert "weight_sq" in cache.names(conv)
        new = conv.weight.detach().clone()  # new storage; the old one is freed
        new[:, :, :8] *= 3
        conv.weight.data = new
        assert "weight_sq" not in cache.names(conv)
        changed = g.synthesize(w)
        g.fast = False
        assert relative_error(changed, g.synthesize(w)) < 1e-4
        g.fast = True
    assert not torch.allclose(changed, before)


def test_a_copy_or_a_pickle_of_a_used_generator_gives_the_same_images(pair) -> None:
    _, g = pair
    w = wplus_for(g)
    with torch.no_grad():
        expected = g.synthesize(w)  # caches filled
        for other in (copy.deepcopy(g), pickle.loads(pickle.dumps(g))):
            assert not any(cache.names(m) for m in other.modules())
            assert torch.equal(other.synthesize(w), expected)


def test_inference_mode_results_do_not_leak_into_training_calls(pair) -> None:
    ref, _ = pair
    g = load_stylegan2(ref.state_dict())
    w = wplus_for(g)
    with torch.inference_mode():
        first = g.synthesize(w)
    w = w.clone().requires_grad_()
    second = g.synthesize(w)
    second.sum().backward()  # would fail on cached inference tensors
    assert torch.equal(first, second.detach())


def test_dtype_follows_the_module() -> None:
    torch.manual_seed(0)
    g = StyleGAN2Generator(8, 16, 1, 1).to(torch.float64).requires_grad_(False)
    w = torch.randn(1, g.num_layers, 16, dtype=torch.float64)
    with torch.no_grad():
        fast = g.synthesize(w)
        g.fast = False
        slow = g.synthesize(w)
    assert fast.dtype == torch.float64
    assert relative_error(fast, slow) < 1e-10


def test_latents_take_the_generators_dtype(pair8) -> None:
    _, g = pair8
    w = wplus_for(g)
    with torch.no_grad():
        out = g.synthesize(w.double())
    assert out.dtype == torch.float32
    assert torch.allclose(out, g.synthesize(w).detach())


def test_mean_latent_and_truncation(pair) -> None:
    _, g = pair
    a = g.mean_latent(512, generator=torch.Generator().manual_seed(3))
    b = g.mean_latent(512, generator=torch.Generator().manual_seed(3))
    assert a.shape == (1, g.style_dim) and torch.equal(a, b)
    w = torch.randn(5, g.style_dim)
    assert torch.allclose(g.truncate(w, 0.5, a), a + 0.5 * (w - a))
    assert torch.equal(g.truncate(w, 1.0, a), a + 1.0 * (w - a))
    wplus = torch.randn(2, g.num_layers, g.style_dim)
    assert g.truncate(wplus, 0.7, a).shape == wplus.shape
    with pytest.raises(LatentShapeError, match=r"target of shape \(1, 3\) does not broadcast"):
        g.truncate(w, 0.5, torch.zeros(1, 3))


def test_properties(pair64) -> None:
    _, g = pair64
    assert (g.size, g.style_dim, g.n_mlp, g.channel_multiplier, g.num_layers) == (64, 32, 2, 1, 10)
    assert len(g.noise_maps()) == g.num_layers - 1


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 64), (2, 7, 64), (2, 6, 32), (6, 64, 2), (1, 2, 6, 64)])
def test_wrong_wplus_shapes_are_package_errors(pair, shape) -> None:
    _, g = pair
    with pytest.raises(
        LatentShapeError, match=r"expected a W\+ latent of shape \(n, 6, 64\)"
    ) as info:
        g.synthesize(torch.zeros(shape))
    assert isinstance(info.value, LatentError | SoundguideError)
    assert isinstance(info.value, ValueError)
    assert str(tuple(shape)) in str(info.value)


def test_other_bad_inputs(pair) -> None:
    _, g = pair
    with pytest.raises(LatentShapeError, match="float tensor"):
        g.synthesize(torch.zeros(1, 6, 64, dtype=torch.long))
    with pytest.raises(LatentShapeError, match=r"got list"):
        g.synthesize([0.0])  # type: ignore[arg-type]
    with pytest.raises(
        LatentShapeError, match=r"mapping expects z of shape \(n, 64\), got \(2, 6, 64\)"
    ):
        g.mapping(torch.zeros(2, 6, 64))
    with pytest.raises(ConfigError, match="precision must be 'fp32' or 'bf16', got 'fp16'"):
        g.synthesize(torch.zeros(1, 6, 64), precision="fp16")  # type: ignore[arg-type]
