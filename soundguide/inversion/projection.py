"""Projection: images to latents by optimization, rosinality's ``projector.py`` recipe.

For any :class:`~soundguide.core.interfaces.Generator`:

- start at the mean W of 10,000 mapping samples (``sample_latent`` at
  truncation 1, layer 0), or at a ``start`` latent from another inverter
  (e4e); ``latent_std = sqrt(sum((w - mean) ** 2) / n)`` scales the latent
  noise;
- Adam on one W vector per image broadcast to every layer (``w_plus``: one
  per layer) and, when the generator has noise inputs, on fresh N(0, 1)
  noise maps, one per image;
- learning rate ``lr * ramp(t)`` (:func:`learning_rate`) with t = step / steps,
  and Gaussian noise of scale ``latent_std * noise * max(0, 1 - t /
  noise_ramp) ** 2`` added to the latent before each forward;
- loss = LPIPS(VGG) + ``noise_regularize`` * the noise maps' multi-scale
  autocorrelation (:func:`noise_regularization`) + ``mse`` * MSE, on images
  average-pooled to 256 px when larger;
- the noise maps re-normalized (zero mean, unit std) after every step.

Each image's losses are computed on its own and summed, so with Adam's
per-element updates the images of a batch do not interact (rosinality takes
the noise terms and the MSE over the whole batch; for one image both agree).
Random draws come from one ``torch.Generator`` seeded by ``seed`` on the
CPU: the same seed gives the same start and noise on every device.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch.nn import functional as F

from soundguide.core.errors import ConfigError, ImageError, LatentError
from soundguide.core.interfaces import Generator, Inversion
from soundguide.core.progress import progress_bar

if TYPE_CHECKING:
    from soundguide.inversion.lpips import LPIPS

__all__ = [
    "LOSS_SIZE",
    "ProjectionSettings",
    "latent_noise_scale",
    "latent_statistics",
    "learning_rate",
    "noise_regularization",
    "normalize_noise_",
    "pool_to",
    "project",
]

LOSS_SIZE = 256
"""Images larger than this are average-pooled to it for the losses (as rosinality)."""
MEAN_CHUNK = 512
"""Mapping samples drawn at once for the mean latent."""


@dataclass(frozen=True)
class ProjectionSettings:
    """rosinality's ``projector.py`` options, with its defaults."""

    steps: int = 1000
    lr: float = 0.1
    lr_rampup: float = 0.05
    lr_rampdown: float = 0.25
    noise: float = 0.05
    """Latent noise strength, in units of ``latent_std``."""
    noise_ramp: float = 0.75
    """Fraction of the run over which the latent noise decays to 0."""
    noise_regularize: float = 1e5
    mse: float = 0.0
    w_plus: bool = False
    """One latent per layer (W+) instead of one W vector broadcast to all."""
    mean_samples: int = 10_000

    def __post_init__(self) -> None:
        checks = [
            ("steps", self.steps >= 0, ">= 0"),
            ("lr", self.lr > 0, "> 0"),
            ("lr_rampup", self.lr_rampup > 0, "> 0"),
            ("lr_rampdown", self.lr_rampdown > 0, "> 0"),
            ("noise", self.noise >= 0, ">= 0"),
            ("noise_ramp", self.noise_ramp > 0, "> 0"),
            ("noise_regularize", self.noise_regularize >= 0, ">= 0"),
            ("mse", self.mse >= 0, ">= 0"),
            ("mean_samples", self.mean_samples >= 1, ">= 1"),
        ]
        for name, ok, rule in checks:
            value = getattr(self, name)
            if not ok or (isinstance(value, float) and not math.isfinite(value)):
                raise ConfigError(f"projection setting {name} must be {rule}, got {value!r}")


def learning_rate(t: float, lr: float, rampdown: float = 0.25, rampup: float = 0.05) -> float:
    """rosinality's ``get_lr``: ``lr`` ramped up linearly over ``rampup`` and down
    along a half cosine over the last ``rampdown`` of the run (t in [0, 1])."""
    ramp = min(1.0, (1.0 - t) / rampdown)
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    return lr * ramp * min(1.0, t / rampup)


def latent_noise_scale(t: float, latent_std: float, strength: float, ramp: float) -> float:
    """Std of the noise added to the latent at time t: ``latent_std * strength *
    max(0, 1 - t / ramp) ** 2``."""
    return latent_std * strength * max(0.0, 1.0 - t / ramp) ** 2


def noise_regularization(noises: Sequence[torch.Tensor]) -> torch.Tensor:
    """rosinality's ``noise_regularize``, per image: squared means of each map times
    itself shifted by one pixel (both axes, wrapping), summed over the map and
    its 2x2 average-pooled halvings down to 8x8.

    Input: maps (n, 1, h, w). Output: (n,).
    """
    n = noises[0].shape[0]
    total = noises[0].new_zeros(n)
    for noise in noises:
        size = noise.shape[2]
        while True:
            total = (
                total
                + (noise * torch.roll(noise, shifts=1, dims=3)).mean((1, 2, 3)).square()
                + (noise * torch.roll(noise, shifts=1, dims=2)).mean((1, 2, 3)).square()
            )
            if size <= 8:
                break
            noise = noise.reshape(n, 1, size // 2, 2, size // 2, 2).mean((3, 5))
            size //= 2
    return total


@torch.no_grad()
def normalize_noise_(noises: Sequence[torch.Tensor]) -> None:
    """Shift and scale each image's map to zero mean and unit (unbiased) std, in place."""
    for noise in noises:
        mean = noise.mean((1, 2, 3), keepdim=True)
        std = noise.std((1, 2, 3), keepdim=True)
        noise.sub_(mean).div_(std)


def pool_to(image: torch.Tensor, size: int = LOSS_SIZE) -> torch.Tensor:
    """Average-pool by ``side // size`` when the image is larger than ``size``
    (rosinality's reshape-mean). Input/Output: (n, C, H, W)."""
    factor = image.shape[-1] // size
    return F.avg_pool2d(image, factor) if factor > 1 else image


@torch.no_grad()
def latent_statistics(
    generator: Generator, samples: int, rng: torch.Generator
) -> tuple[torch.Tensor, float]:
    """Mean and spread of ``samples`` mapping outputs (layer 0 of ``sample_latent``
    at truncation 1), drawn :data:`MEAN_CHUNK` at a time.

    Output: the mean (D,) and ``sqrt(sum((w - mean) ** 2) / samples)``.
    """
    count, mean, m2 = 0, None, 0.0
    for start in range(0, samples, MEAN_CHUNK):
        k = min(MEAN_CHUNK, samples - start)
        w = generator.sample_latent(k, 1.0, rng)[:, 0].double()
        chunk_mean = w.mean(0)
        chunk_m2 = (w - chunk_mean).square().sum().item()
        if mean is None:
            mean, m2 = chunk_mean, chunk_m2
        else:  # Chan et al.'s pairwise update
            delta = chunk_mean - mean
            mean = mean + delta * (k / (count + k))
            m2 += chunk_m2 + delta.square().sum().item() * count * k / (count + k)
        count += k
    assert mean is not None
    return mean.float(), math.sqrt(m2 / count)


def project(
    images: torch.Tensor,
    generator: Generator,
    lpips: LPIPS,
    *,
    settings: ProjectionSettings | None = None,
    start: Inversion | None = None,
    stop: Callable[[], bool] | None = None,
    progress: bool = True,
    seed: int = 0,
) -> Inversion:
    """Latents (and noise maps) of ``generator`` that render ``images``.

    Input: (n, 3, R, R) in [-1, 1] with R = ``generator.resolution``, on the
    generator's device. ``start``: latents (n, L, D) (and optionally noise
    maps) to refine instead of the mean latent. ``stop()`` true between two
    steps ends the run with what it has. The generator's own noise is in use
    again on return.

    Output: latent (n, L, D) on the CPU, the tuned noise maps (n, 1, h, w)
    on the CPU (None for a generator without noise inputs), and per-step
    losses per image: ``lpips``, ``noise``, ``mse`` (unweighted) and ``total``.
    """
    s = settings if settings is not None else ProjectionSettings()
    _check_images(images, generator.resolution)
    n, device = images.shape[0], images.device
    layers, dim = generator.num_layers, generator.latent_dim
    rng = torch.Generator().manual_seed(seed)

    mean, latent_std = latent_statistics(generator, s.mean_samples, rng)
    if start is not None:
        latent = _start_latent(start, n, layers, dim, s.w_plus).to(device)
    elif s.w_plus:
        latent = mean.to(device).expand(n, layers, dim).clone()
    else:
        latent = mean.to(device).expand(n, dim).clone()
    latent.requires_grad_(True)

    fixed = generator.noise_maps()
    noises: list[torch.Tensor] = []
    if fixed:
        start_noise = start.noise if start is not None else None
        if start_noise is not None:
            _check_start_noise(start_noise, fixed, n)
            noises = [m.detach().to(device, torch.float32).clone() for m in start_noise]
        else:
            noises = [torch.randn((n, 1, *m.shape[2:]), generator=rng).to(device) for m in fixed]
        for m in noises:
            m.requires_grad_(True)

    target = pool_to(images.detach())
    with torch.no_grad():
        target_features = lpips.features(target)
    optimizer = torch.optim.Adam([latent, *noises], lr=s.lr)
    history: dict[str, list[list[float]]] = {"lpips": [], "noise": [], "mse": [], "total": []}

    bar = progress_bar(enabled=progress, total=s.steps, desc="projection", unit="step")
    try:
        if noises:
            generator.use_noise(noises)
        for step in range(s.steps):
            if stop is not None and stop():
                break
            t = step / s.steps
            lr = learning_rate(t, s.lr, s.lr_rampdown, s.lr_rampup)
            optimizer.param_groups[0]["lr"] = lr
            scale = latent_noise_scale(t, latent_std, s.noise, s.noise_ramp)
            jitter = torch.randn(latent.shape, generator=rng).to(device)
            noisy = latent + jitter * scale
            wplus = noisy if s.w_plus else noisy[:, None, :].expand(n, layers, dim)

            image = pool_to(generator.synthesize(wplus))
            p_loss = lpips.distance(image, target_features)
            n_loss = noise_regularization(noises) if noises else p_loss.new_zeros(n)
            mse = (image - target).square().mean((1, 2, 3))
            total = p_loss + s.noise_regularize * n_loss
            if s.mse:
                total = total + s.mse * mse
            values = torch.stack([p_loss, n_loss, mse, total]).detach().tolist()
            if not all(math.isfinite(v) for v in values[3]):
                warnings.warn(
                    f"projection stopped at step {step + 1} of {s.steps}: the loss is not "
                    "finite; keeping the latent of the step before",
                    RuntimeWarning,
                    stacklevel=2,
                )
                break
            optimizer.zero_grad(set_to_none=True)
            total.sum().backward()
            optimizer.step()
            if noises:
                normalize_noise_(noises)
            for key, row in zip(history, values, strict=True):
                history[key].append(row)
            bar.set_postfix(
                lpips=f"{sum(values[0]) / n:.4f}", noise=f"{sum(values[1]) / n:.2e}", lr=f"{lr:.4f}"
            )
            bar.update(1)
    finally:
        bar.close()
        if noises:
            generator.use_noise(fixed)

    with torch.no_grad():
        final = latent if s.w_plus else latent[:, None, :].expand(n, layers, dim)
        return Inversion(
            latent=final.detach().to("cpu").clone(),
            noise=[m.detach().to("cpu").clone() for m in noises] if noises else None,
            history=history,
        )


def _shape(value: Any) -> str:
    return str(tuple(value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__


def _check_images(images: Any, resolution: int) -> None:
    expected = f"(n, 3, {resolution}, {resolution})"
    if (
        not isinstance(images, torch.Tensor)
        or images.ndim != 4
        or images.shape[0] == 0
        or tuple(images.shape[1:]) != (3, resolution, resolution)
    ):
        raise ImageError(
            f"projection expects images of shape {expected} for this generator, "
            f"got {_shape(images)}"
        )
    if not images.is_floating_point():
        raise ImageError(f"projection expects float images in [-1, 1], got {images.dtype}")
    if not bool(torch.isfinite(images).all()):
        raise ImageError("projection got images with NaN or infinite values")


def _start_latent(start: Inversion, n: int, layers: int, dim: int, w_plus: bool) -> torch.Tensor:
    latent = start.latent
    if not isinstance(latent, torch.Tensor) or tuple(latent.shape) != (n, layers, dim):
        raise LatentError(
            f"projection start latent must have shape ({n}, {layers}, {dim}), got {_shape(latent)}"
        )
    latent = latent.detach().float()
    if w_plus:
        return latent.clone()
    if not torch.allclose(latent, latent[:, :1].expand_as(latent)):
        raise LatentError(
            "projection start latent differs between layers, but w_plus is off "
            "(one W vector for every layer)",
            hint="project with w_plus = true to refine a W+ start",
        )
    return latent[:, 0].clone()


def _check_start_noise(noise: Sequence[torch.Tensor], fixed: Sequence[torch.Tensor], n: int):
    if len(noise) != len(fixed):
        raise LatentError(
            f"projection start has {len(noise)} noise maps; the generator takes {len(fixed)}"
        )
    for i, (m, f) in enumerate(zip(noise, fixed, strict=True)):
        expected = (n, 1, *f.shape[2:])
        if not isinstance(m, torch.Tensor) or tuple(m.shape) != expected:
            raise LatentError(
                f"projection start noise map {i} must have shape {expected}, got {_shape(m)}"
            )
