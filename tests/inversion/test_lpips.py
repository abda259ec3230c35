"""LPIPS (VGG): the split forward against the ``lpips`` package's, weights files, offline errors."""

from __future__ import annotations

import copy
import urllib.error
import urllib.request
import warnings

import pytest
import torch

from soundguide.core.checkpoints import WeightsRegistry
from soundguide.core.errors import CheckpointError, ImageError, WeightsError
from soundguide.core.interfaces import RunContext
from soundguide.inversion.lpips import VGG16_WEIGHTS, load_lpips


@pytest.fixture(scope="module")
def ours():
    return load_lpips(None, seed=1)


def plain_lpips(state: dict[str, torch.Tensor] | None = None):
    """``lpips.LPIPS`` built the package's way (random trunk, calibrated linear layers)."""
    import lpips

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)
    if state is not None:
        trunk = {k: v for k, v in state.items() if k.startswith("net.")}
        assert len(trunk) == 26  # 13 convolutions
        model.load_state_dict(trunk, strict=False)
    return model.eval()


def images(n: int, size: int = 48, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def torchvision_file(path, model, extra=None):
    """Our trunk's weights under torchvision's ``features.I.*`` names, as vgg16-397923af.pth has."""
    state = {
        f"features.{k.split('.')[2]}.{k.split('.')[3]}": v.clone()
        for k, v in model.model.state_dict().items()
        if k.startswith("net.")
    }
    state["classifier.6.bias"] = torch.zeros(1000)
    state.update(extra or {})
    torch.save(state, path)
    return path


def test_the_calibrated_layers_and_scaling_are_the_packages(ours) -> None:
    plain = plain_lpips()
    got = ours.model.state_dict()
    for key, value in plain.state_dict().items():
        if not key.startswith("net."):
            assert torch.equal(got[key], value), key
    assert set(got) == set(plain.state_dict())


def test_distances_and_gradients_equal_the_packages_forward(ours) -> None:
    plain = plain_lpips(ours.model.state_dict())
    a, b = images(2, seed=0), images(2, seed=1)
    a1, a2 = a.clone().requires_grad_(), a.clone().requires_grad_()
    expected = plain(a1, b).view(2)
    got = ours(a2, b)
    assert got.shape == (2,)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    (g_expected,) = torch.autograd.grad(expected.sum(), a1)
    (g_got,) = torch.autograd.grad(got.sum(), a2)
    torch.testing.assert_close(g_got, g_expected, rtol=1e-4, atol=1e-9)
    # the split: features of the target once, then distances
    target = ours.features(b)
    assert len(target) == 5 and target[0].shape == (2, 64, 48, 48)
    torch.testing.assert_close(ours.distance(a, target), expected.detach(), rtol=1e-5, atol=1e-7)
    assert ours(a, a).abs().max() < 1e-6 and (ours(a, b) > 0).all()


def test_both_memory_formats_give_the_same_distances(ours) -> None:
    from soundguide.inversion.lpips import LPIPS

    assert ours.channels_last  # the default on CPUs
    assert ours.model.net.slice1[0].weight.is_contiguous(memory_format=torch.channels_last)
    plain = LPIPS(
        copy.deepcopy(ours.model).to(memory_format=torch.contiguous_format), channels_last=False
    )
    assert plain.model.net.slice1[0].weight.is_contiguous()
    a, b = images(2, seed=8), images(2, seed=9)
    torch.testing.assert_close(plain(a, b), ours(a, b), rtol=1e-5, atol=1e-7)


def test_the_network_is_frozen_and_stays_in_eval_mode(ours) -> None:
    assert not any(p.requires_grad for p in ours.parameters())
    ours.train()
    assert not any(m.training for m in ours.modules())
    a, b = images(1, seed=2), images(1, seed=3)
    assert torch.equal(ours(a, b), ours(a, b))  # the linear layers' dropout stays off


def test_random_trunks_follow_the_seed() -> None:
    a, b, c = (load_lpips(None, seed=s).model.net.slice1[0].weight for s in (1, 1, 2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert abs(a.std().item() - (2 / (64 * 9)) ** 0.5) < 0.005  # kaiming normal, fan out


def test_weights_are_read_from_torchvisions_file(ours, tmp_path) -> None:
    path = torchvision_file(tmp_path / "vgg16-397923af.pth", ours)
    loaded = load_lpips(path)
    for key, value in ours.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key
    a, b = images(1, seed=4), images(1, seed=5)
    assert torch.equal(loaded(a, b), ours(a, b))


def test_files_that_are_not_vgg16_are_refused_in_one_line(ours, tmp_path) -> None:
    path = torchvision_file(tmp_path / "wrong.pth", ours, {"features.28.weight": torch.zeros(3)})
    with pytest.raises(
        CheckpointError,
        match=r"not torchvision's VGG16: features.28.weight should be \(512, 512, 3, 3\), found \(3,\)",
    ):
        load_lpips(path)
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, tmp_path / "short.pth")
    with pytest.raises(CheckpointError, match=r"features.0.bias should be \(64,\), found missing"):
        load_lpips(tmp_path / "short.pth")
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    with pytest.raises(CheckpointError, match="is not a VGG16 state dict .*holds a Tensor"):
        load_lpips(tmp_path / "tensor.pth")
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_lpips(tmp_path / "missing.pth")


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (torch.zeros(3, 32, 32), r"shape \(n, 3, H, W\) with H, W >= 16, got \(3, 32, 32\)"),
        (torch.zeros(1, 1, 32, 32), r"got \(1, 1, 32, 32\)"),
        (torch.zeros(1, 3, 8, 32), r"got \(1, 3, 8, 32\)"),
        (
            torch.zeros(1, 3, 32, 32, dtype=torch.uint8),
            "float images in \\[-1, 1\\], got torch.uint8",
        ),
        ([1, 2], "got list"),
    ],
)
def test_bad_images_are_image_errors(ours, value, match) -> None:
    with pytest.raises(ImageError, match=match):
        ours.features(value)


# -- the known-weights entry --------------------------------------------------------------------


def test_the_entry_is_torchvisions_vgg16_file() -> None:
    from torchvision.models import VGG16_Weights

    assert VGG16_WEIGHTS.url == VGG16_Weights.IMAGENET1K_V1.url
    assert VGG16_WEIGHTS.url.endswith("/" + VGG16_WEIGHTS.filename)
    # torchvision names its files by the first 8 hex digits of their sha256
    assert VGG16_WEIGHTS.sha256.startswith(VGG16_WEIGHTS.filename.split("-")[1][:8])
    assert len(VGG16_WEIGHTS.sha256) == 64 and "BSD-3-Clause" in VGG16_WEIGHTS.license


def test_offline_the_error_names_the_file_to_place(tmp_path, monkeypatch) -> None:
    def offline(url, timeout=None):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    registry = WeightsRegistry(home=tmp_path)
    registry.add(VGG16_WEIGHTS)
    context = RunContext(weights=registry, progress=False)
    expected = tmp_path / "weights" / "vgg16-397923af.pth"
    with pytest.raises(WeightsError) as info:
        context.resolve_weights("vgg16-lpips")
    message = str(info.value)
    assert "\n" not in message
    assert VGG16_WEIGHTS.url in message and str(expected) in message and "no network" in message
    assert f"download {VGG16_WEIGHTS.url} yourself to {expected}" in info.value.hint
    assert not expected.exists()


def test_a_placed_file_is_used_without_downloading(ours, tmp_path, monkeypatch) -> None:
    def offline(url, timeout=None):
        raise AssertionError("no download expected")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    registry = WeightsRegistry(home=tmp_path)
    registry.add(VGG16_WEIGHTS)
    registry.folder.mkdir(parents=True)
    placed = torchvision_file(registry.local_path("vgg16-lpips"), ours)
    path = RunContext(weights=registry, progress=False).resolve_weights("vgg16-lpips")
    assert path == placed
    a, b = images(1, seed=6), images(1, seed=7)
    assert torch.equal(load_lpips(path)(a, b), ours(a, b))
