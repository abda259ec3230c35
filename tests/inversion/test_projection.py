"""Projection: rosinality's recipe step for step, recovery of a known latent, its controls."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch.nn import functional as F

from soundguide.core.errors import ConfigError, ImageError, LatentError
from soundguide.core.interfaces import Generator, Inversion, RunContext
from soundguide.inversion.lpips import load_lpips
from soundguide.inversion.projection import (
    ProjectionSettings,
    latent_noise_scale,
    latent_statistics,
    learning_rate,
    noise_regularization,
    normalize_noise_,
    pool_to,
    project,
)
from soundguide.plugins.stylegan2 import StyleGAN2
from tests.generators.stylegan2.helpers import make_reference
from tests.toy_plugins import ToyGenerator

FAST = ProjectionSettings(steps=6, mean_samples=512)

# -- rosinality's projector.py, written out as a plain reference ------------------------------


def rosinality_noise_regularize(noises):
    loss = 0
    for noise in noises:
        size = noise.shape[2]
        while True:
            loss = (
                loss
                + (noise * torch.roll(noise, shifts=1, dims=3)).mean().pow(2)
                + (noise * torch.roll(noise, shifts=1, dims=2)).mean().pow(2)
            )
            if size <= 8:
                break
            noise = noise.reshape([-1, 1, size // 2, 2, size // 2, 2])
            noise = noise.mean([3, 5])
            size //= 2
    return loss


def rosinality_noise_normalize_(noises):
    for noise in noises:
        mean = noise.mean()
        std = noise.std()
        noise.data.add_(-mean).div_(std)


def rosinality_get_lr(t, initial_lr, rampdown=0.25, rampup=0.05):
    lr_ramp = min(1, (1 - t) / rampdown)
    lr_ramp = 0.5 - 0.5 * math.cos(lr_ramp * math.pi)
    lr_ramp = lr_ramp * min(1, t / rampup)
    return initial_lr * lr_ramp


# -- fixtures ------------------------------------------------------------------------------------


def tame_reference(size: int = 16, seed: int = 3):
    """A random rosinality generator whose images lie mostly in [-1, 1] and whose noise
    inputs are weak, as a trained generator's are."""
    ref = make_reference(size, 32, 2, 1, seed=seed)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.endswith("noise.weight"):
                p.mul_(0.1)
            elif name.startswith("to_rgb") and name.endswith("conv.weight"):
                p.mul_(0.3)
    return ref


@pytest.fixture(scope="module")
def reference():
    return tame_reference()


@pytest.fixture(scope="module")
def generator(reference, tmp_path_factory) -> StyleGAN2:
    """The ``stylegan2`` plugin at 16 px holding ``reference``'s weights."""
    path = tmp_path_factory.mktemp("ckpt") / "g.pt"
    torch.save({"g_ema": reference.state_dict()}, path)
    config = StyleGAN2.Config(checkpoint=path, mean_samples=16)
    return StyleGAN2(config, RunContext(cache_dir=tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="module")
def lpips():
    return load_lpips(None, seed=1)


@pytest.fixture(scope="module")
def toy() -> ToyGenerator:
    """A generator without noise inputs."""
    return ToyGenerator(ToyGenerator.Config(size=16, layers=3, dim=6), RunContext())


def render(generator: Generator, n: int = 1, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    w = generator.sample_latent(n, 0.7, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return w, generator.synthesize(w)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Peak signal-to-noise ratio of images in [-1, 1] (peak-to-peak 2)."""
    return (10 * torch.log10(4 / (a - b).square().mean())).item()


class Recording(Generator):
    """Wraps a generator and keeps every latent it renders."""

    def __init__(self, inner: Generator) -> None:
        self.inner = inner
        self.latents: list[torch.Tensor] = []

    num_layers = property(lambda self: self.inner.num_layers)
    latent_dim = property(lambda self: self.inner.latent_dim)
    resolution = property(lambda self: self.inner.resolution)

    def mean_latent(self):
        return self.inner.mean_latent()

    def sample_latent(self, n, truncation, generator=None):
        return self.inner.sample_latent(n, truncation, generator)

    def synthesize(self, latent):
        self.latents.append(latent.detach().clone())
        return self.inner.synthesize(latent)

    def noise_maps(self):
        return self.inner.noise_maps()

    def use_noise(self, noise):
        self.inner.use_noise(noise)


# -- the schedule and the terms against rosinality's formulas ------------------------------------


def test_the_learning_rate_is_rosinalitys_get_lr() -> None:
    for t in [0, 0.01, 0.025, 0.05, 0.3, 0.5, 0.75, 0.8, 0.9, 0.999, 1.0]:
        assert learning_rate(t, 0.1) == pytest.approx(rosinality_get_lr(t, 0.1), abs=1e-15)
        assert learning_rate(t, 0.2, 0.5, 0.1) == pytest.approx(
            rosinality_get_lr(t, 0.2, 0.5, 0.1), abs=1e-15
        )
    assert learning_rate(0, 0.1) == 0  # the first step only fills Adam's moments
    assert learning_rate(0.025, 0.1) == pytest.approx(0.05)  # half-way up the ramp
    assert learning_rate(0.5, 0.1) == pytest.approx(0.1)
    # half-way down the cosine: 0.5 - 0.5 cos(pi / 2)
    assert learning_rate(1 - 0.125, 0.1) == pytest.approx(0.05)
    assert learning_rate(1.0, 0.1) == pytest.approx(0.0, abs=1e-15)


def test_the_latent_noise_decays_quadratically_to_zero() -> None:
    assert latent_noise_scale(0, 2.0, 0.05, 0.75) == pytest.approx(0.1)
    assert latent_noise_scale(0.375, 2.0, 0.05, 0.75) == pytest.approx(0.1 * 0.25)
    assert latent_noise_scale(0.75, 2.0, 0.05, 0.75) == 0
    assert latent_noise_scale(0.9, 2.0, 0.05, 0.75) == 0


def test_noise_regularization_is_rosinalitys_per_image() -> None:
    gen = torch.Generator().manual_seed(0)
    noises = [torch.randn(2, 1, s, s, generator=gen) for s in (4, 8, 16, 32)]
    per_image = noise_regularization(noises)
    assert per_image.shape == (2,)
    for i in range(2):
        solo = rosinality_noise_regularize([m[i : i + 1] for m in noises])
        torch.testing.assert_close(per_image[i], solo)
    # a constant map correlates perfectly with itself at every scale: 2 terms per level
    ones = [torch.ones(1, 1, s, s) for s in (4, 8, 16, 32)]
    assert noise_regularization(ones).item() == pytest.approx(2 * (1 + 1 + 2 + 3))


def test_noise_maps_are_normalized_per_image_and_map_in_place() -> None:
    gen = torch.Generator().manual_seed(0)
    noises = [torch.randn(2, 1, s, s, generator=gen) * 3 + 1 for s in (4, 16)]
    noises[0][1] *= 5
    same = [m for m in noises]
    normalize_noise_(noises)
    assert all(a is b for a, b in zip(noises, same, strict=True))
    for m in noises:
        torch.testing.assert_close(m.mean((1, 2, 3)), torch.zeros(2), atol=1e-6, rtol=0)
        torch.testing.assert_close(m.std((1, 2, 3)), torch.ones(2))
    one = [torch.randn(1, 1, 8, 8, generator=gen) * 2]
    expected = [one[0].clone()]
    rosinality_noise_normalize_(expected)
    normalize_noise_(one)
    torch.testing.assert_close(one[0], expected[0])


def test_large_images_are_pooled_as_rosinality_reshapes() -> None:
    image = torch.randn(2, 3, 512, 512)
    expected = image.reshape(2, 3, 256, 2, 256, 2).mean([3, 5])
    torch.testing.assert_close(pool_to(image), expected)
    small = torch.randn(1, 3, 256, 256)
    assert pool_to(small) is small


def test_latent_statistics_are_those_of_all_samples_at_once(generator) -> None:
    n = 1200  # three chunks, the last one short
    mean, std = latent_statistics(generator, n, torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(5)
    w = torch.cat([generator.sample_latent(k, 1.0, gen)[:, 0] for k in (512, 512, 176)])
    torch.testing.assert_close(mean, w.mean(0))
    assert std == pytest.approx(((w - w.mean(0)).square().sum() / n).sqrt().item(), rel=1e-5)


# -- parity of the steps with rosinality's loop ---------------------------------------------------


def package_lpips(state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """``lpips.LPIPS`` built the package's way, as rosinality's projector calls it
    (both images through VGG every step, the linear layers trainable), with ``state``."""
    import warnings

    import lpips

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)
    model.load_state_dict(state)
    return model.eval()


class RecordingAdam(torch.optim.Adam):
    """torch's Adam, keeping each step's gradients."""

    grads: list[list[torch.Tensor]] = []

    def step(self, closure=None):
        RecordingAdam.grads.append([p.grad.clone() for p in self.param_groups[0]["params"]])
        return super().step(closure)


def rosinality_steps(reference, percept, imgs, steps, run, *, mse, seed):
    """rosinality's projector loop (W, not w_plus) for ``run`` of ``steps`` steps, with the
    random draws taken in projection's order from one seeded generator."""
    rng = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        latent_out = reference.style(torch.randn(512, 32, generator=rng))
        latent_mean = latent_out.mean(0)
        latent_std = ((latent_out - latent_mean).pow(2).sum() / 512) ** 0.5
    noises = [
        torch.randn(1, 1, 2 ** ((i + 5) // 2), 2 ** ((i + 5) // 2), generator=rng) for i in range(5)
    ]
    latent_in = latent_mean.detach().clone().unsqueeze(0).repeat(imgs.shape[0], 1)
    latent_in.requires_grad = True
    for noise in noises:
        noise.requires_grad = True
    optimizer = torch.optim.Adam([latent_in] + noises, lr=0.1)
    losses, grads = [], []
    for i in range(run):
        t = i / steps
        optimizer.param_groups[0]["lr"] = rosinality_get_lr(t, 0.1)
        noise_strength = latent_std * 0.05 * max(0, 1 - t / 0.75) ** 2
        latent_n = latent_in + torch.randn(latent_in.shape, generator=rng) * noise_strength.item()
        img_gen, _ = reference([latent_n], input_is_latent=True, noise=noises)
        p_loss = percept(img_gen, imgs).sum()
        n_loss = rosinality_noise_regularize(noises)
        mse_loss = F.mse_loss(img_gen, imgs)
        loss = p_loss + 1e5 * n_loss + mse * mse_loss
        optimizer.zero_grad()
        loss.backward()
        grads.append([latent_in.grad.clone()] + [n.grad.clone() for n in noises])
        optimizer.step()
        rosinality_noise_normalize_(noises)
        losses.append([p_loss.item(), n_loss.item(), mse_loss.item(), loss.item()])
    return latent_in.detach(), [n.detach() for n in noises], losses, grads


@pytest.mark.parametrize("mse", [0.0, 0.5])
def test_the_steps_are_rosinalitys(reference, generator, lpips, monkeypatch, mse) -> None:
    _, target = render(generator, seed=2)
    percept = package_lpips(lpips.model.state_dict())
    settings = ProjectionSettings(steps=20, mean_samples=512, mse=mse)
    RecordingAdam.grads = []
    monkeypatch.setattr(torch.optim, "Adam", RecordingAdam)
    calls = iter(range(100))
    got = project(
        target,
        generator,
        lpips,
        settings=settings,
        progress=False,
        seed=4,
        stop=lambda: next(calls) >= 3,
    )
    monkeypatch.undo()
    latent, noises, losses, grads = rosinality_steps(
        copy.deepcopy(reference).requires_grad_(True), percept, target, 20, 3, mse=mse, seed=4
    )
    rows = list(zip(*(got.history[k] for k in ("lpips", "noise", "mse", "total")), strict=True))
    assert len(rows) == 3
    for ours, theirs in zip(rows, losses, strict=True):
        assert [v[0] for v in ours] == pytest.approx(theirs, rel=1e-4, abs=1e-7)
    for ours, theirs in zip(RecordingAdam.grads, grads, strict=True):
        assert len(ours) == len(theirs) == 6
        for a, b in zip(ours, theirs, strict=True):
            assert a.shape == b.shape and b.abs().max() > 0
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4 * b.abs().max().item())
    torch.testing.assert_close(got.latent, latent[:, None].expand(1, 6, 32), rtol=1e-4, atol=1e-5)
    for a, b in zip(got.noise, noises, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# -- what a user sees ------------------------------------------------------------------------------


def test_a_known_latent_is_recovered(generator, lpips) -> None:
    w, target = render(generator, seed=1)
    spy = Recording(generator)
    settings = ProjectionSettings(steps=150, mean_samples=2000)
    result = project(target, spy, lpips, settings=settings, progress=False)
    generator.use_noise(result.noise)
    try:
        with torch.no_grad():
            again = generator.synthesize(result.latent)
    finally:
        generator.use_noise(None)
    assert psnr(again, target) >= 30
    # the latent rendered at a few steps (with the decaying latent noise until 3/4 of the run)
    errors = [(spy.latents[k] - w).norm().item() for k in (0, 40, 80, 149)]
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False)), errors
    assert errors[-1] < 0.5 * errors[0]
    # no latent noise at the end, and the last step's learning rate is tiny
    torch.testing.assert_close(spy.latents[-1], result.latent, atol=1e-3, rtol=0)
    lp = result.history["lpips"]
    assert lp[-1][0] < 0.5 * lp[0][0]


def test_history_has_one_row_per_step_and_image(toy, lpips) -> None:
    _, target = render(toy, n=2)
    result = project(target, toy, lpips, settings=FAST, progress=False)
    assert set(result.history) == {"lpips", "noise", "mse", "total"}
    for rows in result.history.values():
        assert len(rows) == 6 and all(len(row) == 2 for row in rows)
    assert result.noise is None  # a generator without noise inputs
    assert result.history["noise"] == [[0.0, 0.0]] * 6
    for p, t in zip(result.history["lpips"], result.history["total"], strict=True):
        assert p == t  # mse weight 0, no noise maps
    assert result.latent.shape == (2, 3, 6) and result.latent.device.type == "cpu"


def test_w_and_w_plus(toy, lpips) -> None:
    _, target = render(toy)
    w = project(target, toy, lpips, settings=FAST, progress=False).latent
    assert torch.equal(w, w[:, :1].expand_as(w))
    settings = ProjectionSettings(steps=6, mean_samples=512, w_plus=True)
    wplus = project(target, toy, lpips, settings=settings, progress=False).latent
    assert not torch.allclose(wplus[:, 0], wplus[:, 1])


def test_the_mse_weight_counts(toy, lpips) -> None:
    _, target = render(toy)
    settings = ProjectionSettings(steps=3, mean_samples=512, mse=2.0)
    h = project(target, toy, lpips, settings=settings, progress=False).history
    for p, m, t in zip(h["lpips"], h["mse"], h["total"], strict=True):
        assert t[0] == pytest.approx(p[0] + 2.0 * m[0], rel=1e-6)


def test_noise_maps_come_back_normalized_and_the_generator_as_it_was(generator, lpips) -> None:
    _, target = render(generator, n=2)
    fixed = generator.noise_maps()
    result = project(target, generator, lpips, settings=FAST, progress=False)
    assert [tuple(m.shape) for m in result.noise] == [(2, 1, r, r) for r in (4, 8, 8, 16, 16)]
    for m in result.noise:
        torch.testing.assert_close(m.mean((1, 2, 3)), torch.zeros(2), atol=1e-6, rtol=0)
        torch.testing.assert_close(m.std((1, 2, 3)), torch.ones(2))
    assert all(a is b for a, b in zip(generator.noise_maps(), fixed, strict=True))


def test_the_generators_noise_is_restored_when_a_step_fails(generator, lpips) -> None:
    _, target = render(generator)
    fixed = generator.noise_maps()
    seen = []

    def stop():
        seen.append(any(a is b for a, b in zip(generator.noise_maps(), fixed, strict=True)))
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        project(target, generator, lpips, settings=FAST, progress=False, stop=stop)
    assert seen == [False]  # the projection's own maps were in use
    assert all(a is b for a, b in zip(generator.noise_maps(), fixed, strict=True))
    assert generator._noise is None


def test_images_in_a_batch_do_not_interact(toy, lpips) -> None:
    _, a = render(toy, n=1, seed=1)
    _, b = render(toy, n=2, seed=2)
    first = project(torch.cat([a, b[:1]]), toy, lpips, settings=FAST, progress=False)
    second = project(torch.cat([a, b[1:]]), toy, lpips, settings=FAST, progress=False)
    torch.testing.assert_close(first.latent[0], second.latent[0], rtol=1e-5, atol=1e-6)
    assert [r[0] for r in first.history["total"]] == pytest.approx(
        [r[0] for r in second.history["total"]], rel=1e-5
    )
    assert not torch.allclose(first.latent[1], second.latent[1])


def test_same_seed_same_result(generator, lpips) -> None:
    _, target = render(generator)
    a, b, c = (
        project(target, generator, lpips, settings=FAST, progress=False, seed=s) for s in (0, 0, 1)
    )
    assert torch.equal(a.latent, b.latent) and torch.equal(a.noise[-1], b.noise[-1])
    assert not torch.equal(a.latent, c.latent)


def test_stop_returns_what_it_has(generator, lpips) -> None:
    _, target = render(generator)
    full = project(target, generator, lpips, settings=FAST, progress=False)
    calls = []
    early = project(
        target,
        generator,
        lpips,
        settings=FAST,
        progress=False,
        stop=lambda: calls.append(1) or len(calls) > 2,
    )
    assert len(calls) == 3
    for key, rows in early.history.items():
        assert rows == full.history[key][:2]
    assert not torch.equal(early.latent, full.latent)
    untouched = project(target, generator, lpips, settings=FAST, progress=False, stop=lambda: True)
    assert untouched.history["total"] == []
    mean, _ = latent_statistics(generator, 512, torch.Generator().manual_seed(0))
    torch.testing.assert_close(untouched.latent, mean.expand(1, 6, 32))


def test_a_start_replaces_the_mean_and_keeps_tuning_noise(generator, lpips) -> None:
    w, target = render(generator)
    start_w = w + 0.1 * torch.randn(w.shape, generator=torch.Generator().manual_seed(9))
    gen = torch.Generator().manual_seed(3)
    noise = [torch.randn(1, *m.shape[1:], generator=gen) for m in generator.noise_maps()]
    settings = ProjectionSettings(steps=0, mean_samples=512, w_plus=True)
    same = project(target, generator, lpips, settings=settings, start=Inversion(start_w, noise))
    assert torch.equal(same.latent, start_w)
    assert all(torch.equal(a, b) for a, b in zip(same.noise, noise, strict=True))
    settings = ProjectionSettings(steps=4, mean_samples=512, w_plus=True)
    moved = project(
        target, generator, lpips, settings=settings, start=Inversion(start_w), progress=False
    )
    assert (moved.latent - start_w).abs().max() < 0.5
    assert moved.noise is not None and len(moved.noise) == 5
    # a W start (every layer equal) without w_plus
    w_start = Inversion(start_w[:, :1].expand(1, 6, 32).clone())
    kept = project(
        target,
        generator,
        lpips,
        settings=ProjectionSettings(steps=0),
        start=w_start,
        progress=False,
    )
    assert torch.equal(kept.latent, w_start.latent)


def test_a_non_finite_loss_stops_with_the_last_good_latent(lpips) -> None:
    toy = ToyGenerator(
        ToyGenerator.Config(size=16, layers=3, dim=6, nan_images_at=[4]), RunContext()
    )
    _, target = render(toy)
    toy.calls = 0
    settings = ProjectionSettings(steps=6, mean_samples=512)
    with pytest.warns(RuntimeWarning, match="stopped at step 4 of 6: the loss is not finite"):
        result = project(target, toy, lpips, settings=settings, progress=False)
    assert len(result.history["total"]) == 3
    assert torch.isfinite(result.latent).all()


class ShapeSpy:
    """An LPIPS that records the shapes it is handed."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.shapes: list[tuple[int, ...]] = []

    def features(self, image):
        self.shapes.append(tuple(image.shape))
        return self.inner.features(image)

    def distance(self, image, target):
        self.shapes.append(tuple(image.shape))
        return self.inner.distance(image, target)


def test_images_above_256_px_are_pooled_for_the_losses(lpips) -> None:
    big = ToyGenerator(ToyGenerator.Config(size=512, layers=2, dim=3), RunContext())
    _, target = render(big)
    spy = ShapeSpy(lpips)
    settings = ProjectionSettings(steps=1, mean_samples=512, noise=0.0)
    result = project(target, big, spy, settings=settings, progress=False)
    assert spy.shapes == [(1, 3, 256, 256)] * 2
    mean, _ = latent_statistics(big, 512, torch.Generator().manual_seed(0))
    with torch.no_grad():
        first = big.synthesize(mean.expand(1, 2, 3))
    expected = (pool_to(first) - pool_to(target)).square().mean().item()
    assert result.history["mse"][0][0] == pytest.approx(expected, rel=1e-5)


def test_the_progress_bar(toy, lpips, capsys) -> None:
    _, target = render(toy)
    project(target, toy, lpips, settings=FAST, progress=False)
    assert capsys.readouterr().err == ""
    project(target, toy, lpips, settings=FAST, progress=True)
    err = capsys.readouterr().err
    assert "projection" in err and "6/6" in err and "lpips=" in err


# -- refusals ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("images", "match"),
    [
        (
            torch.zeros(1, 3, 32, 32),
            r"images of shape \(n, 3, 16, 16\) for this generator, got \(1, 3, 32, 32\)",
        ),
        (torch.zeros(3, 16, 16), r"got \(3, 16, 16\)"),
        (torch.zeros(1, 4, 16, 16), r"got \(1, 4, 16, 16\)"),
        (torch.zeros(0, 3, 16, 16), r"got \(0, 3, 16, 16\)"),
        ([[0.0]], "got list"),
        (
            torch.zeros(1, 3, 16, 16, dtype=torch.uint8),
            r"float images in \[-1, 1\], got torch.uint8",
        ),
        (torch.full((1, 3, 16, 16), float("nan")), "NaN or infinite values"),
    ],
)
def test_bad_images_are_one_line_image_errors(toy, lpips, images, match) -> None:
    with pytest.raises(ImageError, match=match) as info:
        project(images, toy, lpips, settings=FAST, progress=False)
    assert "\n" not in str(info.value)


def test_bad_starts_are_latent_errors(generator, lpips) -> None:
    _, target = render(generator)
    with pytest.raises(
        LatentError, match=r"start latent must have shape \(1, 6, 32\), got \(1, 5, 32\)"
    ):
        project(target, generator, lpips, start=Inversion(torch.zeros(1, 5, 32)), progress=False)
    wplus = torch.randn(1, 6, 32)
    with pytest.raises(LatentError, match="differs between layers, but w_plus is off") as info:
        project(target, generator, lpips, start=Inversion(wplus), progress=False)
    assert "w_plus = true" in info.value.hint
    settings = ProjectionSettings(steps=0, w_plus=True, mean_samples=16)
    with pytest.raises(LatentError, match="start has 2 noise maps; the generator takes 5"):
        project(
            target,
            generator,
            lpips,
            settings=settings,
            start=Inversion(wplus, [torch.zeros(1, 1, 4, 4)] * 2),
        )
    bad = [torch.zeros(1, 1, r, r) for r in (4, 8, 8, 16, 8)]
    with pytest.raises(
        LatentError, match=r"noise map 4 must have shape \(1, 1, 16, 16\), got \(1, 1, 8, 8\)"
    ):
        project(target, generator, lpips, settings=settings, start=Inversion(wplus, bad))


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("steps", -1, "steps must be >= 0, got -1"),
        ("lr", 0.0, "lr must be > 0"),
        ("noise_ramp", 0.0, "noise_ramp must be > 0"),
        ("mse", float("nan"), "mse must be >= 0"),
        ("mean_samples", 0, "mean_samples must be >= 1"),
    ],
)
def test_bad_settings_are_config_errors(field, value, match) -> None:
    with pytest.raises(ConfigError, match=match):
        ProjectionSettings(**{field: value})
