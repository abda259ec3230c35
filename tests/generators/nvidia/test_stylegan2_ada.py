from __future__ import annotations

from pathlib import Path

import pytest
import torch

from soundguide.core.errors import CheckpointError, LatentError
from soundguide.core.nvidia_pickle import PersistentObject, load_nvidia_network
from soundguide.generators.nvidia.stylegan2_ada import StyleGAN2ADAGenerator
from tests.generators.nvidia import ada_reference as nvidia


def load(tmp_path: Path, G: torch.nn.Module) -> StyleGAN2ADAGenerator:
    """Through a pickle file, as a user meets it."""
    path = tmp_path / "network-snapshot-000000.pkl"
    nvidia.write_pickle(path, G)
    return StyleGAN2ADAGenerator.from_persistent(load_nvidia_network(path))


def assert_close(ours: torch.Tensor, ref: torch.Tensor, rtol: float = 1e-4) -> None:
    assert ours.shape == ref.shape
    scale = ref.abs().max().clamp_min(1e-6)
    err = (ours - ref).abs().max() / scale
    assert err < rtol, f"max error {err:.2e} of the reference's range {scale:.3g}"


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[nvidia.Generator, StyleGAN2ADAGenerator]:
    """32 px, w_dim 32, two fp16 resolutions, conv_clamp 256 (as NVIDIA's configs)."""
    G = nvidia.make_generator(img_resolution=32, synthesis=dict(num_fp16_res=2, conv_clamp=256))
    return G, load(tmp_path_factory.mktemp("ada"), G)


def test_state_dict_names_and_shape(pair):
    ref, ours = pair
    assert set(ours.state_dict()) == set(ref.state_dict())
    for name, tensor in ref.state_dict().items():
        assert torch.equal(ours.state_dict()[name], tensor), name
    assert ours.num_ws == ref.num_ws == 8
    ws = torch.randn(2, ours.num_ws, 32)
    assert ours.synthesis(ws).shape == (2, 3, 32, 32)


@pytest.mark.parametrize("fused_modconv", [True, False])
def test_synthesis_matches_the_reference(pair, fused_modconv):
    ref, ours = pair
    torch.manual_seed(1)
    ws = torch.randn(3, ours.num_ws, 32)
    expected = ref.synthesis(ws, noise_mode="const", force_fp32=True, fused_modconv=fused_modconv)
    assert_close(ours.synthesis(ws, noise_mode="const"), expected)
    expected = ref.synthesis(ws, noise_mode="none", force_fp32=True, fused_modconv=fused_modconv)
    assert_close(ours.synthesis(ws, noise_mode="none"), expected)


@pytest.mark.parametrize(("psi", "cutoff"), [(1, None), (0.5, None), (0.7, 3), (-0.2, 0)])
def test_mapping_then_synthesis_matches_the_reference(pair, psi, cutoff):
    ref, ours = pair
    z = torch.randn(2, 16, generator=torch.Generator().manual_seed(2))
    ws = ours.mapping(z, None, truncation_psi=psi, truncation_cutoff=cutoff)
    expected_ws = ref.mapping(z, None, truncation_psi=psi, truncation_cutoff=cutoff)
    assert ws.shape == (2, 8, 32)
    assert_close(ws, expected_ws)
    image = ours(z, None, truncation_psi=psi, truncation_cutoff=cutoff)
    assert_close(image, ref(z, None, psi, cutoff, noise_mode="const", force_fp32=True))
    # the rows before the cutoff moved, the rest did not: the test can tell truncation ran
    untruncated = ref.mapping(z, None)
    cut = ours.num_ws if cutoff is None else cutoff
    for i in range(ours.num_ws):
        assert torch.allclose(ws[:, i], untruncated[:, i]) == (psi == 1 or i >= cut), i


def test_conditional_mapping_with_embed(tmp_path):
    ref = nvidia.make_generator(
        seed=3,
        c_dim=5,
        img_resolution=16,
        mapping=dict(num_layers=3, embed_features=8, layer_features=24),
    )
    ours = load(tmp_path, ref)
    assert "mapping.embed.weight" in ours.state_dict()
    z = torch.randn(2, 16)
    c = torch.nn.functional.one_hot(torch.tensor([1, 4]), 5).float()
    ws = ours.mapping(z, c, truncation_psi=0.6, truncation_cutoff=2)
    assert_close(ws, ref.mapping(z, c, truncation_psi=0.6, truncation_cutoff=2))
    assert_close(ours(z, c), ref(z, c, noise_mode="const"))
    other = ours.mapping(z, c.flip(0))
    assert not torch.allclose(other, ours.mapping(z, c))  # the label counts
    with pytest.raises(LatentError, match=r"labels c of shape \(2, 5\), got NoneType"):
        ours.mapping(z, None)


def test_fp16_blocks_run_in_float32_equal_to_nvidias_float16_run_up_to_rounding(pair):
    ref, ours = pair
    assert ref.synthesis.b32.use_fp16 and not ref.synthesis.b8.use_fp16
    ws = torch.randn(2, ours.num_ws, 32, generator=torch.Generator().manual_seed(3))
    image = ours.synthesis(ws)
    assert image.dtype == torch.float32
    assert_close(image, ref.synthesis(ws, noise_mode="const"), rtol=1e-2)  # float16 inside


def test_const_noise_is_deterministic_and_used(pair):
    _, ours = pair
    ws = torch.randn(1, ours.num_ws, 32)
    a, b = ours.synthesis(ws), ours.synthesis(ws)
    assert torch.equal(a, b)
    assert not torch.allclose(a, ours.synthesis(ws, noise_mode="none"))
    assert not torch.allclose(a, ours.synthesis(ws, noise_mode="random"))


def test_gradient_reaches_ws(pair):
    _, ours = pair
    ws = torch.randn(2, ours.num_ws, 32, requires_grad=True)
    ours.synthesis(ws).square().mean().backward()
    assert ws.grad is not None and ws.grad.shape == ws.shape
    assert (ws.grad.abs().sum(dim=2) > 0).all()  # every latent of every sample counts
    assert all(p.grad is None for p in ours.parameters())  # the weights are frozen


def test_conv_clamp_is_honoured(tmp_path):
    ref = nvidia.make_generator(seed=4, img_resolution=16, synthesis=dict(conv_clamp=0.05))
    ours = load(tmp_path, ref)
    ws = 3 * torch.randn(2, ours.num_ws, 32)
    image = ours.synthesis(ws)
    assert_close(image, ref.synthesis(ws, noise_mode="const"))
    # each ToRGB output is clamped to +-0.05; the image sums the up-sampled ones
    # (upsampling keeps the bound: the filter's taps are non-negative and sum 1 per phase)
    assert image.abs().max() <= 3 * 0.05 + 1e-6
    unclamped = load(tmp_path, nvidia.make_generator(seed=4, img_resolution=16))
    assert unclamped.synthesis(ws).abs().max() > 3 * 0.05


def test_64_px_with_a_wider_filter_and_no_fp16(tmp_path):
    ref = nvidia.make_generator(
        seed=5,
        img_resolution=64,
        img_channels=1,
        w_dim=16,
        synthesis=dict(channel_base=512, channel_max=16, resample_filter=[1, 2, 1]),
    )
    ours = load(tmp_path, ref)
    ws = torch.randn(2, ours.num_ws, 16)
    assert ours.num_ws == 10
    assert_close(ours.synthesis(ws), ref.synthesis(ws, noise_mode="const"))


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (
            dict(synthesis_kwargs={"architecture": "resnet"}),
            r"synthesis_kwargs\.architecture='resnet': must be 'skip' \('orig' and 'resnet'",
        ),
        (dict(synthesis_kwargs={"architecture": "orig"}), r"architecture='orig'"),
        (dict(mapping_kwargs={"activation": "swish"}), r"mapping_kwargs\.activation='swish'"),
        (
            dict(synthesis_kwargs={"magic": 1}),
            r"unsupported StyleGAN2-ADA option synthesis_kwargs\.magic=1",
        ),
        (dict(img_resolution=24), r"img_resolution must be a power of two >= 4, got 24"),
        (dict(extra=True), r"unsupported StyleGAN2-ADA Generator option extra=True"),
    ],
)
def test_unsupported_options_are_one_line_errors_naming_them(change, match):
    kwargs = dict(z_dim=4, c_dim=0, w_dim=8, img_resolution=8, img_channels=3)
    for key, value in change.items():
        kwargs[key] = value
    record = PersistentObject(
        "Generator", {"_init_kwargs": kwargs, "_parameters": {}, "_modules": {}}
    )
    with pytest.raises(CheckpointError, match=match) as info:
        StyleGAN2ADAGenerator.from_persistent(record)
    assert "\n" not in str(info.value)


def test_refuses_weights_that_do_not_match(tmp_path):
    path = tmp_path / "network-snapshot.pkl"
    nvidia.write_pickle(path, nvidia.make_generator(img_resolution=16))
    record = load_nvidia_network(path)
    record.state["_init_kwargs"] = dict(record.init_kwargs, img_resolution=32)
    with pytest.raises(
        CheckpointError, match=r"do not match the Generator's options: missing synthesis\.b32\."
    ):
        StyleGAN2ADAGenerator.from_persistent(record)
    with pytest.raises(CheckpointError, match=r"expected NVIDIA's Generator record"):
        StyleGAN2ADAGenerator.from_persistent(record.submodules()["mapping"])


def test_bad_latents_say_what_was_expected(pair):
    _, ours = pair
    with pytest.raises(LatentError, match=r"expected ws of shape \(n, 8, 32\) .* got \(2, 7, 32\)"):
        ours.synthesis(torch.zeros(2, 7, 32))
    with pytest.raises(LatentError, match=r"mapping expects z of shape \(n, 16\), got \(2, 3\)"):
        ours.mapping(torch.zeros(2, 3), None)
    with pytest.raises(LatentError, match="noise_mode"):
        ours.synthesis(torch.zeros(1, 8, 32), noise_mode="fixed")


@pytest.mark.parametrize(
    ("synthesis", "mapping"),
    [
        (dict(kernel_size=5, use_noise=False, activation="relu"), dict(activation="relu")),
        (dict(kernel_size=1), dict(w_avg_beta=None)),
    ],
)
def test_layer_options_match_the_reference(tmp_path, synthesis, mapping):
    ref = nvidia.make_generator(seed=6, img_resolution=16, synthesis=synthesis, mapping=mapping)
    ours = load(tmp_path, ref)
    z = torch.randn(2, 16)
    assert_close(ours(z), ref(z, None, noise_mode="const", fused_modconv=False))
    if mapping.get("w_avg_beta", 0.995) is None:
        assert "mapping.w_avg" not in ours.state_dict()
        with pytest.raises(LatentError, match=r"keeps no w_avg \(w_avg_beta=None\)"):
            ours.mapping(z, None, truncation_psi=0.5)
