from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import pytest
import torch

from soundguide.core.errors import CheckpointError, ConfigError, LatentError, SoundguideError
from soundguide.generators.stylegan2 import (
    LatentShapeError,
    ModulatedConv2d,
    StyledConv,
    StyleGAN2Generator,
    infer_stylegan2_config,
    load_stylegan2,
    upfirdn2d,
    winograd_conv3x3,
    winograd_conv3x3_backward,
    winograd_weight,
)
from tests.generators import rosinality_reference as rosinality

DATA = Path(__file__).parents[1] / "data"
SHARED = Path(__file__).parents[2].parent / "shared" / "reference"
MANIFESTS = {256: "stylegan2_256_cm2.keys.json", 1024: "stylegan2_1024_cm2.keys.json"}


def manifest(size: int) -> list[tuple[str, tuple[int, ...], str]]:
    rows = json.loads((DATA / MANIFESTS[size]).read_text())
    return [(key, tuple(shape), dtype) for key, shape, dtype in rows]


def random_state_dict(rows: list[tuple[str, tuple[int, ...], str]]) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {key: torch.randn(shape, generator=gen) for key, shape, _ in rows}


def make_reference(
    size: int, style_dim: int, n_mlp: int, cm: int, seed: int = 0
) -> rosinality.Generator:
    """A reference generator with non-trivial noise strengths and biases."""
    torch.manual_seed(seed)
    ref = rosinality.Generator(size, style_dim, n_mlp, channel_multiplier=cm)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.endswith("noise.weight"):
                p.normal_(0, 0.5)
            elif name.endswith("activate.bias") or (name.startswith("to_rgb") and "bias" in name):
                p.normal_(0, 0.2)
            elif name.endswith("modulation.bias"):
                p.add_(torch.randn_like(p) * 0.2)
    return ref.eval().requires_grad_(False)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| over mean |b|: the parity measure of the spec."""
    return ((a - b).abs().max() / b.abs().mean()).item()


@pytest.fixture(scope="module")
def pair() -> tuple[rosinality.Generator, StyleGAN2Generator]:
    """16 px, style_dim 64, 3 mapping layers: the reference and ours, same weights."""
    ref = make_reference(16, 64, 3, 2)
    return ref, load_stylegan2(ref.state_dict())


@pytest.fixture(scope="module")
def pair8() -> tuple[rosinality.Generator, StyleGAN2Generator]:
    """8 px, style_dim 16, 1 mapping layer: small enough for float64 and bf16 runs."""
    ref = make_reference(8, 16, 1, 2, seed=2)
    return ref, load_stylegan2(ref.state_dict())


@pytest.fixture(scope="module")
def pair64() -> tuple[rosinality.Generator, StyleGAN2Generator]:
    """64 px, channel multiplier 1: exercises a layer whose width depends on it."""
    ref = make_reference(64, 32, 2, 1, seed=1)
    return ref, load_stylegan2(ref.state_dict())


def wplus_for(g: StyleGAN2Generator, n: int = 2, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, g.num_layers, g.style_dim, generator=gen)


# -- checkpoint format -----------------------------------------------------------------


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


def test_the_reference_has_the_same_keys_as_ours(pair64) -> None:
    ref, _ = pair64
    ours = StyleGAN2Generator(64, 32, 2, 1, init=False).state_dict()
    assert [(k, v.shape) for k, v in ours.items()] == [
        (k, v.shape) for k, v in ref.state_dict().items()
    ]


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


def test_bare_state_dict_has_no_latent_avg(pair) -> None:
    ref, _ = pair
    g = load_stylegan2(ref.state_dict())
    assert g.latent_avg is None
    assert not g.training


def test_missing_file_is_a_checkpoint_error(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_stylegan2(tmp_path / "nope.pt")


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


def test_upfirdn2d_matches_the_native_reference() -> None:
    x = torch.randn(2, 5, 7, 9)
    k = rosinality.make_kernel([1, 3, 3, 1]) * 4
    for up, pad in [(1, (1, 1)), (2, (2, 1)), (1, (2, 1)), (2, (-1, 2))]:
        expected = rosinality.upfirdn2d(x, k, up=up, pad=pad)
        torch.testing.assert_close(upfirdn2d(x, k, up=up, pad=pad), expected)


# -- fast-path building blocks ------------------------------------------------------------


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize(
    ("n", "c_in", "c_out", "size"),
    [(1, 8, 5, 8), (3, 6, 7, 12), (2, 3, 4, 48)],  # 2 x 48 x 48 > 4096 px: NCHW gathers via NHWC
)
@pytest.mark.parametrize("chunked", [False, True])
def test_winograd_convolution_and_its_adjoint_equal_conv2d(
    n, c_in, c_out, size, channels_last, chunked, monkeypatch
):
    from soundguide.generators.stylegan2 import model as stylegan2

    if chunked:  # one tile row per chunk: the chunks' seams, and their overlaps in the adjoint
        monkeypatch.setattr(stylegan2, "WINOGRAD_CHUNK_BYTES", 1)
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(c_out, c_in, 3, 3, generator=gen, dtype=torch.float64)
    x = torch.randn(n, c_in, size, size, generator=gen, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(n, c_out, size, size, generator=gen, dtype=torch.float64)
    expected = torch.nn.functional.conv2d(x, weight, padding=1)
    (expected_grad,) = torch.autograd.grad(expected, x, grad)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    u = winograd_weight(weight)
    got = winograd_conv3x3(x.detach().contiguous(memory_format=fmt), u)
    got_grad = winograd_conv3x3_backward(grad.contiguous(memory_format=fmt), u)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got_grad, expected_grad)
    for out in (got, got_grad):  # in the input's memory format
        assert out.is_contiguous(memory_format=fmt)


def test_winograd_float32_error_is_small_and_beats_the_common_points(monkeypatch) -> None:
    import functools

    from soundguide.generators.stylegan2 import model as stylegan2

    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(256, 256, 3, 3, generator=gen) / 48
    x = torch.randn(1, 256, 16, 16, generator=gen)
    truth = torch.nn.functional.conv2d(x.double(), weight.double(), padding=1)
    direct = relative_error(torch.nn.functional.conv2d(x, weight, padding=1).double(), truth)
    ours = relative_error(winograd_conv3x3(x, winograd_weight(weight)).double(), truth)
    common_points = functools.partial(
        stylegan2._winograd_f43.__wrapped__, (0.0, 1.0, -1.0, 2.0, -2.0)
    )
    monkeypatch.setattr(stylegan2, "_winograd_f43", common_points)
    common = relative_error(winograd_conv3x3(x, winograd_weight(weight)).double(), truth)
    # float32 Winograd amplifies rounding (the transforms are not orthogonal); the
    # amount depends on the BLAS's summation order, so bounds are relative
    assert ours < 0.6 * common
    assert ours < 20 * direct and ours < 5e-5


def assert_fast_equals_textbook(layer, x0, latent0, noise, grad) -> None:
    """Output and input/latent gradients of a StyledConv: fast path vs textbook path."""
    results = []
    for fast in (True, False):
        layer.conv.fast = fast
        x, latent = x0.clone().requires_grad_(), latent0.clone().requires_grad_()
        out = layer(x, latent, noise)
        out.backward(grad)
        results.append((out, x.grad, latent.grad))
    for got, expected in zip(*results, strict=True):
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("upsample", [False, True])
@pytest.mark.parametrize("size", [4, 16])  # 16 px: weights are modulated; 4 px: activations
def test_frozen_styled_conv_equals_the_textbook_layer(size, upsample, n, channels_last) -> None:
    torch.manual_seed(0)
    layer = StyledConv(6, 4, 3, 8, upsample=upsample).double().requires_grad_(False)
    with torch.no_grad():
        layer.noise.weight.fill_(0.3)
        layer.activate.bias.normal_()
        layer.conv.modulation.bias.normal_()
    out_size = 2 * size if upsample else size
    noise = torch.randn(1, 1, out_size, out_size, dtype=torch.float64)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x0 = torch.randn(n, 6, size, size, dtype=torch.float64).contiguous(memory_format=fmt)
    latent0 = torch.randn(n, 8, dtype=torch.float64)
    grad = torch.randn(n, 4, out_size, out_size, dtype=torch.float64)
    # one sample, weight smaller than grad: the demodulation rides on the weight
    assert layer.conv.folds_grad_scale(grad, x0) == (n == 1 and out_size**2 > 6 * 3 * 3)
    assert_fast_equals_textbook(layer, x0, latent0, noise, grad)


@pytest.mark.parametrize("upsample", [False, True])
def test_a_channels_last_sample_stays_channels_last_through_the_modulated_weights(upsample):
    # one sample, so the batch is not folded into the channels; the layout must
    # survive (a channels-last input with an NCHW output costs a copy per layer)
    layer = StyledConv(6, 4, 3, 8, upsample=upsample).requires_grad_(False)
    x = torch.randn(1, 6, 16, 16).contiguous(memory_format=torch.channels_last)
    assert layer.conv.modulate_weights(x)
    out = layer(x, torch.randn(1, 8), torch.randn(1, 1, *(2 * [32 if upsample else 16])))
    assert out.stride()[1] == 1 and out.stride()[0] == out[0].numel()


@pytest.mark.parametrize("channels_last", [False, True])
def test_frozen_styled_conv_through_winograd_equals_the_textbook_layer(channels_last) -> None:
    torch.manual_seed(0)
    layer = StyledConv(256, 256, 3, 8).double().requires_grad_(False)
    layer.conv.winograd = False
    assert not layer.conv.use_winograd(torch.zeros(1, 256, 64, 64))
    layer.conv.winograd = True
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x0 = torch.randn(1, 256, 64, 64, dtype=torch.float64).contiguous(memory_format=fmt)
    assert layer.conv.use_winograd(x0)
    small = torch.zeros(1, 256, 32, 32).contiguous(memory_format=fmt)
    assert not layer.conv.use_winograd(small)  # small maps: a direct convolution
    latent0, noise = torch.randn(1, 8, dtype=torch.float64), torch.randn(1, 1, 64, 64).double()
    grad = torch.randn(1, 256, 64, 64, dtype=torch.float64)
    assert_fast_equals_textbook(layer, x0, latent0, noise, grad)


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
    assert any("winograd" in m.conv._derived for m in layers)  # the option was exercised
    g.clear_cache()
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


def test_upsampling_weights_are_stored_as_the_transposed_convolution_reads_them(pair) -> None:
    # the (C_in, C_out, k, k) view is contiguous, so no call copies the weight;
    # loading, dtype moves and the state dict's shapes leave that as it is
    ref, _ = pair
    g = load_stylegan2(ref.state_dict()).to(torch.float64)
    ups = [m for m in g.modules() if isinstance(m, ModulatedConv2d) and m.upsample]
    assert ups
    x = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    for conv in ups:
        assert conv.weight.shape == (1, conv.out_channel, conv.in_channel, 3, 3)
        assert conv.conv_weight(x).is_contiguous()
        assert conv.conv_weight(x).data_ptr() == conv.weight.data_ptr()
    for name, tensor in g.state_dict().items():
        assert torch.equal(tensor, ref.state_dict()[name].double()), name


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


def test_a_mapped_checkpoint_lets_its_pages_go_once_copied(pair, tmp_path, monkeypatch) -> None:
    from soundguide.core import memory

    ref, ours = pair
    path = tmp_path / "g.pt"
    torch.save({"g_ema": ref.state_dict()}, path)
    asked = []
    real = memory.release_pages
    monkeypatch.setattr(
        memory, "release_pages", lambda t, m: asked.append((t.nbytes, real(t, m))) or True
    )
    g = load_stylegan2(path)
    assert len(asked) == len(ref.state_dict())
    if sys.platform.startswith("linux"):  # every tensor spanning two pages lay in the file
        assert all(done for nbytes, done in asked if nbytes >= 8192)
    w = wplus_for(g)
    with torch.no_grad():  # the copies are intact
        assert torch.equal(g.synthesize(w), ours.synthesize(w))
    assert load_stylegan2(ref.state_dict()) is not None and len(asked) == len(ref.state_dict())
