"""The fast StyleGAN3 ops (nvidia/ops.py), each against its reference in stylegan3.py."""

from __future__ import annotations

import pytest
import torch

from soundguide.generators.nvidia import ops, stylegan3
from soundguide.generators.nvidia.stylegan3 import StyleGAN3Generator

from . import sg3_reference as ref
from .test_stylegan3 import CONFIGS, close


def gradients(fn, inputs: list[torch.Tensor], seed: int = 0) -> tuple[torch.Tensor, ...]:
    """fn's output and the gradients of <output, random> with respect to inputs."""
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = fn(*leaves)
    probe = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    grads = torch.autograd.grad((out * probe).sum(), leaves)
    return (out.detach(), *grads)


def assert_same(fast, reference, inputs: list[torch.Tensor], rel: float = 1e-5) -> None:
    for actual, expected in zip(gradients(fast, inputs), gradients(reference, inputs), strict=True):
        close(actual, expected, rel)


# -- modulated_conv2d ---------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", [1, 3])
@pytest.mark.parametrize("demodulate", [True, False])
@pytest.mark.parametrize("gain_shape", [(), (6,)])
def test_modulated_conv2d_matches_reference(kernel, demodulate, gain_shape) -> None:
    g = torch.Generator().manual_seed(kernel + 2 * demodulate)
    x = torch.randn(3, 6, 9, 8, generator=g)
    weight = torch.randn(5, 6, kernel, kernel, generator=g)
    styles = torch.randn(3, 6, generator=g)
    gain = 0.5 + torch.rand(gain_shape, generator=g)

    def run(impl):
        return lambda x, s: impl.modulated_conv2d(
            x, weight, s, demodulate=demodulate, padding=kernel - 1, input_gain=gain
        )

    assert_same(run(ops), run(stylegan3), [x, styles])
    assert run(ops)(x, styles).shape == (3, 5, 9 + kernel - 1, 8 + kernel - 1)


def test_modulated_conv2d_needs_no_weight_gradient_for_the_styles() -> None:
    """The fast route's backward, with the weight frozen, runs no weight-gradient convolution."""
    x = torch.randn(2, 4, 7, 7)
    weight = torch.randn(3, 4, 3, 3)
    styles = torch.randn(2, 4, requires_grad=True)
    out = ops.modulated_conv2d(x, weight, styles, demodulate=True, padding=1)
    # the convolution's weight is the (frozen) parameter itself, not a per-sample product
    conv = out.grad_fn.next_functions[0][0]
    assert type(conv).__name__ == "ConvolutionBackward0"
    out.square().sum().backward()
    assert styles.grad is not None and styles.grad.abs().sum() > 0


# -- upfirdn2d ----------------------------------------------------------------------------------

# (up, down, taps, padding, radial): the geometries of StyleGAN3's layers and odd ones
UPFIRDN_CASES = [
    (2, 1, 12, (9, 8, 9, 8), False),  # up-sampling of a layer that keeps its rate
    (4, 1, 24, (-6, -9, -6, -9), False),  # up-sampling of a layer that doubles it
    (2, 1, 12, (-11, -12, -11, -12), False),  # cropping to the image size
    (3, 1, 5, (0, 1, 4, 2), False),  # odd factor and taps, uneven padding
    (2, 1, 4, (7, 6, 5, 8), False),  # more padding than the filter reaches
    (1, 2, 12, (0, 0, 0, 0), False),  # separable down-sampling
    (1, 2, 12, (0, 0, 0, 0), True),  # radial (2-D) down-sampling of config R
    (2, 2, 6, (1, 2, 3, 0), True),  # 2-D filter with both
    (2, 3, 6, (2, 2, 1, 1), False),  # separable with both
]


@pytest.mark.parametrize(("up", "down", "taps", "padding", "radial"), UPFIRDN_CASES)
def test_upfirdn2d_matches_reference(up, down, taps, padding, radial) -> None:
    g = torch.Generator().manual_seed(taps + up)
    x = torch.randn(2, 3, 23, 19, generator=g)
    f = torch.randn((taps, taps) if radial else (taps,), generator=g)

    def run(impl):
        return lambda x: impl.upfirdn2d(x, f, up=up, down=down, padding=padding, gain=up**2)

    assert_same(run(ops), run(stylegan3), [x])


def test_upfirdn2d_matches_nvidias_reference_op() -> None:
    x = torch.randn(1, 4, 20, 20)
    f = torch.randn(24)
    expected = ref.ref_upfirdn2d(x, f, up=4, padding=(-6, -9, -6, -9), gain=16)
    close(ops.upfirdn2d(x, f, up=4, padding=(-6, -9, -6, -9), gain=16), expected, 1e-5)


def test_upfirdn2d_without_filter_is_the_identity_or_decimation() -> None:
    x = torch.randn(1, 2, 6, 6)
    assert ops.upfirdn2d(x, None) is x
    torch.testing.assert_close(ops.upfirdn2d(x, None, down=2), stylegan3.upfirdn2d(x, None, down=2))


# -- leaky ReLU and clamp, filtered_lrelu -----------------------------------------------------


@pytest.mark.parametrize(
    ("slope", "gain", "clamp"), [(0.2, 2**0.5, 256.0), (0.2, 2**0.5, 0.7), (1.0, 1.0, 0.5)]
)
def test_lrelu_clamp_matches_reference(slope, gain, clamp) -> None:
    x = torch.randn(2, 3, 10, 10, generator=torch.Generator().manual_seed(1))

    def reference(x):
        y = torch.nn.functional.leaky_relu(x, slope) * gain if slope != 1 else x * gain
        return y.clamp(-clamp, clamp)

    assert_same(lambda x: ops.lrelu_clamp(x, slope, gain, clamp), reference, [x])
    if clamp < 1:  # the clamp was active: saturated samples pass no gradient
        _, grad = gradients(lambda x: ops.lrelu_clamp(x, slope, gain, clamp), [x])
        assert (grad == 0).any()


@pytest.mark.parametrize(
    ("up", "down", "taps_up", "taps_down", "padding", "radial", "clamp"),
    [
        (2, 2, 12, 12, (9, 8, 9, 8), False, 256),
        (4, 2, 24, 12, (-6, -9, -6, -9), True, 0.5),
        (1, 1, 1, 1, (0, 0, 0, 0), False, 256),  # ToRGB: no filters, linear
    ],
)
def test_filtered_lrelu_matches_reference(up, down, taps_up, taps_down, padding, radial, clamp):
    g = torch.Generator().manual_seed(up + taps_down)
    x = torch.randn(2, 3, 22, 22, generator=g)
    b = torch.randn(3, generator=g)
    fu = torch.randn(taps_up, generator=g) / taps_up if taps_up > 1 else None
    fd_shape = (taps_down,) * (2 if radial else 1)
    fd = torch.randn(fd_shape, generator=g) / taps_down if taps_down > 1 else None
    linear = taps_up == 1

    def run(impl):
        return lambda x, b: impl.filtered_lrelu(
            x, fu, fd, b, up=up, down=down, padding=padding,
            gain=1.0 if linear else 2**0.5, slope=1.0 if linear else 0.2, clamp=clamp,
        )  # fmt: skip

    assert_same(run(ops), run(stylegan3), [x, b])


# -- the generator: fast route against the reference route ------------------------------------


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def generator(request) -> StyleGAN3Generator:
    torch.manual_seed(0)
    G_ref = ref.randomize(ref.Generator(**CONFIGS[request.param]), seed=1)
    G = StyleGAN3Generator(**CONFIGS[request.param])
    G.load_state_dict(G_ref.state_dict())
    return G.eval().requires_grad_(False)


def test_fast_route_is_the_default_and_is_used(generator, monkeypatch) -> None:
    calls = []
    for name in ("modulated_conv2d", "filtered_lrelu"):
        original = getattr(ops, name)
        monkeypatch.setattr(
            ops, name, lambda *a, _f=original, _n=name, **k: calls.append(_n) or _f(*a, **k)
        )
    ws = torch.randn(1, generator.num_ws, generator.w_dim)
    with torch.no_grad():
        generator.synthesis(ws)
        layers = len(generator.synthesis.layer_names)
        assert calls.count("modulated_conv2d") == calls.count("filtered_lrelu") == layers
        calls.clear()
        generator.set_fast(False)
        try:
            generator.synthesis(ws)
        finally:
            generator.set_fast(True)
    assert calls == []


def test_fast_route_matches_reference_route_with_gradients_in_w_plus(generator) -> None:
    ws = torch.randn(
        2, generator.num_ws, generator.w_dim, generator=torch.Generator().manual_seed(4)
    )

    def run(fast: bool):
        generator.set_fast(fast)
        try:
            return gradients(generator.synthesis, [ws], seed=2)
        finally:
            generator.set_fast(True)

    (image, grad), (image_ref, grad_ref) = run(True), run(False)
    close(image, image_ref, 1e-4)
    close(grad, grad_ref, 1e-4)
    assert all(p.grad is None for p in generator.parameters())
