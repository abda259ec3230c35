from __future__ import annotations

import numpy as np
import pytest
import torch

from soundguide.core.errors import CheckpointError, LatentError
from soundguide.core.nvidia_pickle import PersistentObject, load_nvidia_network
from soundguide.generators.nvidia.stylegan3 import StyleGAN3Generator

from . import sg3_reference as ref

CONFIGS = {
    # config T: 3x3 convolutions, separable Kaiser filters
    "T16": dict(
        z_dim=8, c_dim=0, w_dim=8, img_resolution=16, img_channels=3,
        mapping_kwargs=dict(num_layers=2), channel_base=64, channel_max=8,
        num_layers=4, num_critical=2, margin_size=2, num_fp16_res=4, conv_clamp=256,
    ),
    # conditional, more layers at 32 px (sampling rates 16 -> 32), an active clamp
    "T32": dict(
        z_dim=6, c_dim=3, w_dim=8, img_resolution=32, img_channels=3,
        mapping_kwargs=dict(num_layers=3, lr_multiplier=0.1), channel_base=256, channel_max=8,
        num_layers=5, num_critical=2, margin_size=3, num_fp16_res=2, conv_clamp=1.0,
        output_scale=0.5,
    ),
    # config R: 1x1 convolutions, radial (jinc) downsampling filters, channels doubled
    "R16": dict(
        z_dim=8, c_dim=0, w_dim=8, img_resolution=16, img_channels=3,
        mapping_kwargs=dict(num_layers=2), channel_base=128, channel_max=12,
        num_layers=4, num_critical=2, margin_size=2, num_fp16_res=4, conv_clamp=256,
        conv_kernel=1, use_radial_filters=True, magnitude_ema_beta=0.9,
    ),
}  # fmt: skip


def close(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-4) -> None:
    assert actual.shape == expected.shape
    scale = expected.abs().max().item()
    assert scale > 0
    error = (actual - expected).abs().max().item()
    assert error <= rel * scale, f"max error {error:.3g} vs scale {scale:.3g}"


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def pair(request, tmp_path_factory):
    """(reference generator, the record read from its pickle, the model built from it)."""
    torch.manual_seed(0)
    G_ref = ref.randomize(ref.Generator(**CONFIGS[request.param]), seed=1)
    path = tmp_path_factory.mktemp(request.param) / "stylegan3.pkl"
    ref.write_snapshot(path, G_ref)
    record = load_nvidia_network(path)
    return G_ref, record, StyleGAN3Generator.from_persistent(record)


def test_state_dict_is_the_pickles(pair):
    G_ref, record, G = pair
    assert set(G.state_dict()) == set(G_ref.state_dict()) == set(record.state_dict())
    for name, tensor in G_ref.state_dict().items():
        assert torch.equal(G.state_dict()[name], tensor), name
    radial = [n for n, t in G.state_dict().items() if n.endswith("down_filter") and t.ndim == 2]
    assert bool(radial) == bool(G_ref._init_kwargs.get("use_radial_filters"))
    assert G.num_ws == G_ref.num_ws == G_ref.synthesis.num_layers + 2


def test_synthesis_matches_reference_in_w_plus(pair):
    G_ref, _, G = pair
    ws = torch.randn(3, G.num_ws, G.w_dim, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = G_ref.synthesis(ws)
        actual = G.synthesis(ws)
    assert actual.shape == (3, 3, G.img_resolution, G.img_resolution)
    close(actual, expected)


@pytest.mark.parametrize(("psi", "cutoff"), [(1.0, None), (0.6, None), (0.5, 2)])
def test_mapping_truncation_and_synthesis_match_reference(pair, psi, cutoff):
    G_ref, _, G = pair
    generator = torch.Generator().manual_seed(7)
    z = torch.randn(2, G.z_dim, generator=generator)
    c = torch.randn(2, G.c_dim, generator=generator) if G.c_dim else None
    with torch.no_grad():
        ws_ref = G_ref.mapping(z, c, truncation_psi=psi, truncation_cutoff=cutoff)
        ws = G.mapping(z, c, truncation_psi=psi, truncation_cutoff=cutoff)
        close(ws, ws_ref)
        close(G(z, c, truncation_psi=psi, truncation_cutoff=cutoff), G_ref(z, c, psi, cutoff))
    if psi != 1:  # the truncated rows moved towards w_avg, the others did not
        untruncated = G.mapping(z, c)
        rows = G.num_ws if cutoff is None else cutoff
        w_avg = G.mapping.w_avg
        torch.testing.assert_close(ws[:, :rows], w_avg + psi * (untruncated[:, :rows] - w_avg))
        torch.testing.assert_close(ws[:, rows:], untruncated[:, rows:])


def test_gradient_flows_to_every_row_of_ws(pair):
    _, _, G = pair
    ws = torch.randn(2, G.num_ws, G.w_dim, requires_grad=True)
    G.synthesis(ws).square().mean().backward()
    assert ws.grad is not None and torch.isfinite(ws.grad).all()
    assert (ws.grad.abs().sum(dim=(0, 2)) > 0).all()
    assert all(p.grad is None for p in G.parameters())  # frozen, as built


def test_input_transform_moves_the_image_as_the_reference(pair):
    G_ref, _, G = pair
    ws = torch.randn(2, G.num_ws, G.w_dim, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        before = G.synthesis(ws)
        G.set_input_transform(translate=(0.125, -0.25), rotate=30)
        G_ref.synthesis.input.transform.copy_(
            torch.from_numpy(np.linalg.inv(ref.make_transform((0.125, -0.25), 30)))
        )
        try:
            after, expected = G.synthesis(ws), G_ref.synthesis(ws)
        finally:
            G.set_input_transform()
            G_ref.synthesis.input.transform.copy_(torch.eye(3))
        close(after, expected)
        detail = (before - before.mean(dim=(2, 3), keepdim=True)).abs().max()
        assert (after - before).abs().max() > 0.1 * detail
        torch.testing.assert_close(G.synthesis(ws), before)  # identity restored
    assert torch.equal(G.synthesis.input.transform, torch.eye(3))


def test_translation_follows_gen_images_convention(pair):
    """Whole-pixel translations of the input shift the Fourier features by those pixels."""
    _, _, G = pair
    w = torch.randn(1, G.w_dim)
    layer = G.synthesis.input
    with torch.no_grad():
        base = layer(w)
        shift = 2 / layer.sampling_rate  # two input pixels, in image sizes
        G.set_input_transform(translate=(shift, 0))
        try:
            moved = layer(w)
        finally:
            G.set_input_transform()
    # content moves right by two pixels (away from the band edge, amplitudes equal)
    torch.testing.assert_close(moved[..., 2:], base[..., :-2], atol=1e-4, rtol=1e-4)


def test_refuses_an_unsupported_option_naming_it(pair):
    _, record, _ = pair
    state = dict(record.state)
    state["_init_kwargs"] = {**record.init_kwargs, "use_noise": True}
    tampered = PersistentObject(record.class_name, state)
    with pytest.raises(CheckpointError, match=r"not supported: use_noise \(supported: ") as info:
        StyleGAN3Generator.from_persistent(tampered)
    assert "\n" not in str(info.value)

    mapping = {**record.init_kwargs.mapping_kwargs, "embed_features": 4}
    state["_init_kwargs"] = {**record.init_kwargs, "mapping_kwargs": mapping}
    with pytest.raises(CheckpointError, match=r"mapping_kwargs\.embed_features"):
        StyleGAN3Generator.from_persistent(PersistentObject(record.class_name, state))


def test_refuses_a_layer_whose_saved_geometry_differs(pair):
    _, record, _ = pair
    synthesis = record.submodules()["synthesis"]
    name = synthesis.state["layer_names"][1]
    layer = synthesis.submodules()[name]
    saved = layer.state["padding"]
    layer.state["padding"] = [p + 1 for p in saved]
    try:
        with pytest.raises(CheckpointError, match=rf"synthesis\.{name}\.padding is \[") as info:
            StyleGAN3Generator.from_persistent(record)
    finally:
        layer.state["padding"] = saved
    assert "\n" not in str(info.value)


def test_refuses_a_generator_that_is_not_stylegan3(pair):
    _, record, _ = pair
    synthesis = record.submodules()["synthesis"]
    modules = {k: v for k, v in synthesis.state["_modules"].items() if k != "input"}
    state = dict(record.state)
    state["_modules"] = {
        **record.state["_modules"],
        "synthesis": PersistentObject("SynthesisNetwork", {**synthesis.state, "_modules": modules}),
    }
    with pytest.raises(CheckpointError, match="is no StyleGAN3 generator"):
        StyleGAN3Generator.from_persistent(PersistentObject("Generator", state))


def test_latent_shapes_are_checked(pair):
    _, _, G = pair
    with pytest.raises(LatentError, match=rf"ws has shape \(2, 3\); expected \(N, {G.num_ws}, 8\)"):
        G.synthesis(torch.zeros(2, 3))
    with pytest.raises(LatentError, match=rf"z has shape \(2, 5\); expected \(N, {G.z_dim}\)"):
        G.mapping(torch.zeros(2, 5), None)
