"""The fast ops (ops/), each against its reference: upfirdn2d, Winograd, the modulated routes, caches."""

from __future__ import annotations

import functools

import pytest
import torch

from soundguide.generators.stylegan2 import ModulatedConv2d, StyledConv, ToRGB, load_stylegan2
from soundguide.generators.stylegan2.model import Blur, Upsample
from soundguide.generators.stylegan2.ops import cache, modulated, upfirdn2d, winograd
from soundguide.generators.stylegan2.ops.winograd import (
    winograd_conv3x3,
    winograd_conv3x3_backward,
    winograd_weight,
)
from tests.generators import rosinality_reference as rosinality
from tests.generators.stylegan2.helpers import relative_error

# -- upfirdn2d ------------------------------------------------------------------------------


def test_upfirdn2d_matches_the_native_reference() -> None:
    x = torch.randn(2, 5, 7, 9)
    k = rosinality.make_kernel([1, 3, 3, 1]) * 4
    for up, pad in [(1, (1, 1)), (2, (2, 1)), (1, (2, 1)), (2, (-1, 2))]:
        expected = rosinality.upfirdn2d(x, k, up=up, pad=pad)
        torch.testing.assert_close(upfirdn2d.upfirdn2d(x, k, up=up, pad=pad), expected)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("pad", [(2, 2), (1, 1), (2, 1)])
def test_blur_and_its_backward_equal_upfirdn2d(pad, channels_last) -> None:
    blur = Blur([1, 3, 3, 1], pad=pad, upsample_factor=2).double()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(2, 5, 9, 9, dtype=torch.float64).contiguous(memory_format=fmt)
    bias = torch.randn(5, dtype=torch.float64)
    expected = upfirdn2d.upfirdn2d(x, blur.kernel, pad=pad)  # the model's Blur.forward
    assert torch.equal(blur(x), expected)
    got = upfirdn2d.blur(blur, x)
    assert got.shape == (2, 5, 9 + sum(pad) - 3, 9 + sum(pad) - 3)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(upfirdn2d.blur(blur, x, bias), expected + bias[:, None, None])
    if pad[0] == pad[1]:
        xg = x.clone().requires_grad_()
        grad = torch.randn_like(expected)
        (expected_grad,) = torch.autograd.grad(
            upfirdn2d.upfirdn2d(xg, blur.kernel, pad=pad), xg, grad
        )
        torch.testing.assert_close(upfirdn2d.blur_backward(blur, grad), expected_grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_upsample_equals_zero_insertion_and_upfirdn2d(dtype) -> None:
    up = Upsample([1, 3, 3, 1]).to(dtype)
    x = torch.randn(2, 3, 8, 8, dtype=dtype, requires_grad=True)
    expected = up(x)  # the model's forward: upfirdn2d(x, kernel, up=2, pad=pad)
    got = upfirdn2d.upsample(up, x)
    assert got.shape == (2, 3, 16, 16) and got.dtype == dtype
    torch.testing.assert_close(got, expected)
    grad = torch.randn_like(expected)
    torch.testing.assert_close(
        torch.autograd.grad(got, x, grad)[0], torch.autograd.grad(expected, x, grad)[0]
    )


# -- Winograd -------------------------------------------------------------------------------


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize(
    ("n", "c_in", "c_out", "size"),
    [(1, 8, 5, 8), (3, 6, 7, 12), (2, 3, 4, 48)],  # 2 x 48 x 48 > 4096 px: NCHW gathers via NHWC
)
@pytest.mark.parametrize("chunked", [False, True])
def test_winograd_convolution_and_its_adjoint_equal_conv2d(
    n, c_in, c_out, size, channels_last, chunked, monkeypatch
):
    if chunked:  # one tile row per chunk: the chunks' seams, and their overlaps in the adjoint
        monkeypatch.setattr(winograd, "WINOGRAD_CHUNK_BYTES", 1)
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(c_out, c_in, 3, 3, generator=gen, dtype=torch.float64)
    x = torch.randn(n, c_in, size, size, generator=gen, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(n, c_out, size, size, generator=gen, dtype=torch.float64)
    expected = torch.nn.functional.conv2d(x, weight, padding=1)
    (expected_grad,) = torch.autograd.grad(expected, x, grad)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    u = winograd_weight(weight)
    assert u.shape == (36, c_out, c_in)
    got = winograd_conv3x3(x.detach().contiguous(memory_format=fmt), u)
    got_grad = winograd_conv3x3_backward(grad.contiguous(memory_format=fmt), u)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got_grad, expected_grad)
    for out in (got, got_grad):  # in the input's memory format
        assert out.is_contiguous(memory_format=fmt)


def test_winograd_float32_error_is_small_and_beats_the_common_points(monkeypatch) -> None:
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(256, 256, 3, 3, generator=gen) / 48
    x = torch.randn(1, 256, 16, 16, generator=gen)
    truth = torch.nn.functional.conv2d(x.double(), weight.double(), padding=1)
    direct = relative_error(torch.nn.functional.conv2d(x, weight, padding=1).double(), truth)
    ours = relative_error(winograd_conv3x3(x, winograd_weight(weight)).double(), truth)
    common_points = functools.partial(
        winograd._winograd_f43.__wrapped__, (0.0, 1.0, -1.0, 2.0, -2.0)
    )
    monkeypatch.setattr(winograd, "_winograd_f43", common_points)
    common = relative_error(winograd_conv3x3(x, winograd_weight(weight)).double(), truth)
    # float32 Winograd amplifies rounding (the transforms are not orthogonal); the
    # amount depends on the BLAS's summation order, so bounds are relative
    assert ours < 0.6 * common
    assert ours < 20 * direct and ours < 5e-5


# -- the modulated routes against the textbook forwards ---------------------------------------


def randomized(layer: torch.nn.Module) -> torch.nn.Module:
    """float64, non-trivial noise strength and biases."""
    layer = layer.double()
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name.endswith("bias") or name == "noise.weight":
                p.normal_()
    return layer


@pytest.mark.parametrize("trainable", [False, True])
@pytest.mark.parametrize(
    ("upsample", "demodulate", "kernel_size"),
    [(False, True, 3), (True, True, 3), (False, False, 1)],
)
def test_modulated_conv2d_equals_the_textbook_layer(upsample, demodulate, kernel_size, trainable):
    torch.manual_seed(0)
    conv = ModulatedConv2d(6, 4, kernel_size, 8, demodulate=demodulate, upsample=upsample)
    conv = randomized(conv).requires_grad_(trainable)
    x0, latent0 = torch.randn(2, 6, 8, 8, dtype=torch.float64), torch.randn(2, 8).double()
    out_size = 16 if upsample else 8
    grad = torch.randn(2, 4, out_size, out_size, dtype=torch.float64)
    results = []
    for fast in (True, False):
        conv.fast = fast
        x, latent = x0.clone().requires_grad_(), latent0.clone().requires_grad_()
        out = conv(x, latent)
        out.backward(grad)
        weights = [p.grad.clone() for p in conv.parameters()] if trainable else []
        conv.zero_grad()
        results.append([out, x.grad, latent.grad, *weights])
    assert results[0][0].shape == (2, 4, out_size, out_size)
    for got, expected in zip(*results, strict=True):
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("skip", [False, True])
def test_to_rgb_equals_the_textbook_layer(skip) -> None:
    torch.manual_seed(0)
    layer = randomized(ToRGB(6, 8)).requires_grad_(False)
    x0, latent0 = torch.randn(2, 6, 8, 8, dtype=torch.float64), torch.randn(2, 8).double()
    skip0 = torch.randn(2, 3, 4, 4, dtype=torch.float64) if skip else None
    grad = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    results = []
    for fast in (True, False):
        layer.conv.fast = fast
        x, latent = x0.clone().requires_grad_(), latent0.clone().requires_grad_()
        s = skip0.clone().requires_grad_() if skip else None
        out = layer(x, latent, s)
        out.backward(grad)
        results.append([out, x.grad, latent.grad] + ([s.grad] if skip else []))
    assert results[0][0].shape == (2, 3, 8, 8)
    for got, expected in zip(*results, strict=True):
        torch.testing.assert_close(got, expected)


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
    assert modulated.is_frozen(layer, x0)
    assert modulated.modulate_weights(layer.conv, x0) == (
        size == 16 and (n == 1 or not channels_last)
    )
    # one sample, weight smaller than grad: the demodulation rides on the weight
    assert modulated.folds_grad_scale(layer.conv, grad, x0) == (n == 1 and out_size**2 > 6 * 3 * 3)
    assert_fast_equals_textbook(layer, x0, latent0, noise, grad)


@pytest.mark.parametrize(
    ("upsample", "n", "size"),
    [(True, 1, 4), (True, 2, 4), (False, 1, 8), (False, 2, 4)],
    ids=["up-folded", "up-batch", "modulated-weights-folded", "batch"],
)
def test_the_frozen_styled_conv_function_passes_gradcheck(upsample, n, size) -> None:
    # its backward against finite differences, for every input it gives a gradient
    torch.manual_seed(0)
    conv = StyledConv(3, 2, 3, 4, upsample=upsample).double().requires_grad_(False).conv
    out_size = 2 * size if upsample else size
    x = torch.randn(n, 3, size, size, dtype=torch.float64, requires_grad=True)
    s = torch.randn(n, 3, dtype=torch.float64, requires_grad=True)
    d = torch.rand(n, 2, dtype=torch.float64).add_(0.5).requires_grad_()
    noise_term = torch.randn(1, 1, out_size, out_size, dtype=torch.float64)
    bias = torch.randn(2, dtype=torch.float64)

    def f(x, s, d):
        return modulated.FrozenStyledConv.apply(x, s, d, conv, noise_term, bias)

    assert f(x, s, d).shape == (n, 2, out_size, out_size)
    grad = torch.zeros(n, 2, out_size, out_size, dtype=torch.float64)
    folded = modulated.folds_grad_scale(conv, grad, x)
    assert folded == (n == 1)  # both ways of applying the demodulation in the backward pass
    assert modulated.modulate_weights(conv, x) == (not upsample and size == 8)
    assert torch.autograd.gradcheck(f, (x, s, d))


@pytest.mark.parametrize("upsample", [False, True])
def test_a_channels_last_sample_stays_channels_last_through_the_modulated_weights(upsample):
    # one sample, so the batch is not folded into the channels; the layout must
    # survive (a channels-last input with an NCHW output costs a copy per layer)
    layer = StyledConv(6, 4, 3, 8, upsample=upsample).requires_grad_(False)
    x = torch.randn(1, 6, 16, 16).contiguous(memory_format=torch.channels_last)
    assert modulated.modulate_weights(layer.conv, x)
    out = layer(x, torch.randn(1, 8), torch.randn(1, 1, *(2 * [32 if upsample else 16])))
    assert out.stride()[1] == 1 and out.stride()[0] == out[0].numel()


@pytest.mark.parametrize("channels_last", [False, True])
def test_frozen_styled_conv_through_winograd_equals_the_textbook_layer(channels_last) -> None:
    torch.manual_seed(0)
    layer = StyledConv(256, 256, 3, 8).double().requires_grad_(False)
    layer.conv.winograd = False
    assert not modulated.use_winograd(layer.conv, torch.zeros(1, 256, 64, 64))
    layer.conv.winograd = True
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x0 = torch.randn(1, 256, 64, 64, dtype=torch.float64).contiguous(memory_format=fmt)
    assert modulated.use_winograd(layer.conv, x0)
    small = torch.zeros(1, 256, 32, 32).contiguous(memory_format=fmt)
    assert not modulated.use_winograd(layer.conv, small)  # small maps: a direct convolution
    latent0, noise = torch.randn(1, 8, dtype=torch.float64), torch.randn(1, 1, 64, 64).double()
    grad = torch.randn(1, 256, 64, 64, dtype=torch.float64)
    assert_fast_equals_textbook(layer, x0, latent0, noise, grad)


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
        assert modulated.conv_weight(conv, x).is_contiguous()
        assert modulated.conv_weight(conv, x).data_ptr() == conv.weight.data_ptr()
    for name, tensor in g.state_dict().items():
        assert torch.equal(tensor, ref.state_dict()[name].double()), name


# -- derived-tensor cache ---------------------------------------------------------------------


class Holder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(4, 3), requires_grad=False)


def squared(module: Holder, counter: list[int]) -> torch.Tensor:
    def build() -> torch.Tensor:
        counter.append(1)
        return module.weight.square()

    return cache.derived(module, "sq", (module.weight,), build)


def test_a_derived_tensor_is_built_once_while_its_source_stays() -> None:
    m, builds = Holder(), []
    first = squared(m, builds)
    assert squared(m, builds) is first and len(builds) == 1
    assert cache.names(m) == {"sq"}
    cache.clear(m)
    assert cache.names(m) == set()
    assert squared(m, builds) is not first and len(builds) == 2


def test_a_derived_tensor_is_rebuilt_after_an_in_place_change() -> None:
    m, builds = Holder(), []
    squared(m, builds)
    with torch.no_grad():
        m.weight.mul_(2)
    torch.testing.assert_close(squared(m, builds), m.weight.square())
    assert len(builds) == 2
    m.load_state_dict({"weight": torch.ones(4, 3)})
    assert torch.equal(squared(m, builds), torch.ones(4, 3)) and len(builds) == 3


@pytest.mark.parametrize(
    "move",
    [lambda m: m.double(), lambda m: m.to(torch.float16), lambda m: m.to("meta")],
    ids=["double", "to-float16", "to-meta"],
)
def test_derived_tensors_are_dropped_with_their_source_and_rebuilt_after_a_move(move) -> None:
    m, builds = Holder(), []
    squared(m, builds)
    move(m)  # the old weight's storage is freed, and its derived tensors with it
    assert cache.names(m) == set()
    again = squared(m, builds)
    assert again.dtype == m.weight.dtype and again.device == m.weight.device
    assert len(builds) == 2


def test_a_storage_at_a_reused_address_is_not_taken_for_the_old_one() -> None:
    # same address, same version counter, another storage: told apart by the storage itself
    m, builds = Holder(), []
    base = torch.randn(4, 3)
    m.weight.data = base
    squared(m, builds)
    twin = torch.from_numpy(base.numpy())  # another storage over the same memory
    assert twin.data_ptr() == base.data_ptr()
    m.weight.data = twin
    squared(m, builds)
    assert len(builds) == 2


def test_nothing_is_kept_for_trainable_sources_or_in_inference_mode() -> None:
    m, builds = Holder(), []
    m.weight.requires_grad_(True)
    out = squared(m, builds)
    assert out.requires_grad and cache.names(m) == set()
    m.weight.requires_grad_(False)
    with torch.inference_mode():
        squared(m, builds)
    assert cache.names(m) == set() and len(builds) == 2


def test_the_cache_does_not_keep_its_module_alive() -> None:
    import gc
    import weakref

    m = Holder()
    squared(m, [])
    alive = weakref.ref(m)
    del m
    gc.collect()
    assert alive() is None
