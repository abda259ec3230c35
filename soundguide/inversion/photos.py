"""Photos as start points: read, align (faces) or crop, invert, measure, cache.

One photo at a time, so memory follows the work: :func:`prepare_photo` reads
a photo (at most ``MAX_PIXELS``, transparency refused, EXIF orientation
applied) and brings it to the generator's resolution, either aligned as
FFHQ's faces are (``align=True``: landmarks, then the FFHQ quad) or resized
and centre-cropped (landscapes, LSUN); :func:`invert_photo` runs an inverter
on it, renders the reconstruction and measures it (MSE, PSNR, LPIPS when an
LPIPS network is given). Inversions are cached on disk by the photo's sha256,
the preparation, the generator's weights and the inverter's settings and
weights (:func:`inversion_key`), so a second edit of the same photo starts at
once.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from soundguide.core.errors import ConfigError, ImageError
from soundguide.core.interfaces import Generator, Inversion, Inverter, RunContext


@dataclass
class PreparedPhoto:
    """A photo brought to the generator's resolution: what the inverter sees."""

    path: Path
    sha256: str
    image: torch.Tensor
    """(3, R, R) float32 in [-1, 1], on the CPU."""
    aligned: bool
    """True: aligned as FFHQ faces are; False: resized and centre-cropped."""
    quad: list[list[float]] | None = None
    """The FFHQ crop quad in the photo's pixels (aligned photos only)."""


@dataclass
class PhotoInversion:
    """A photo, the latent found for it, its reconstruction and how close it is."""

    photo: PreparedPhoto
    latent: torch.Tensor
    """(1, L, D) on the CPU."""
    noise: list[torch.Tensor] | None
    """The tuned noise maps, each (1, 1, h, w) on the CPU, or None."""
    reconstruction: torch.Tensor
    """(3, R, R) in [-1, 1] on the CPU: the generator's image of ``latent`` (and ``noise``)."""
    metrics: dict[str, float | None]
    seconds: float
    cached: bool
    history: dict[str, list[list[float]]] = field(default_factory=dict)


# -- preparing ----------------------------------------------------------------------


def prepare_photo(
    path: str | os.PathLike[str],
    resolution: int,
    *,
    align: bool,
    detector: Any = None,
    what: str = "photo",
) -> PreparedPhoto:
    """Read ``path`` and bring it to ``resolution`` x ``resolution``.

    ``align``: detect the largest face and align it with FFHQ's recipe
    (``detector`` is a :class:`soundguide.inversion.landmarks.LandmarkDetector`;
    None: the built-in one, which needs ``pip install 'soundguide[align]'``);
    otherwise resize the shorter side and crop the centre. Raises
    :class:`ImageError` (one line naming the photo) for a photo that cannot
    be used, or when no face is found.
    """
    from soundguide.core.files import sha256_file
    from soundguide.core.images import open_rgb

    path = Path(path)
    picture = open_rgb(path, what=what, transparency="refuse")
    quad = None
    if align:
        from soundguide.inversion.align import align_photo

        aligned = align_photo(picture, resolution, detector, name_for_errors=f"{what} {path}")
        picture, quad = aligned.image, [list(map(float, p)) for p in aligned.quad]
    else:
        from soundguide.inversion.align import center_crop

        picture = center_crop(picture, resolution)
    array = np.asarray(picture.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    image = torch.from_numpy(array).permute(2, 0, 1).contiguous()
    return PreparedPhoto(path, sha256_file(path), image, align, quad)


def should_align(requested: bool, generator: Generator) -> bool:
    """Whether to align faces: asked for, and the generator is not known to make other things.

    A generator whose :attr:`Generator.domain` is known and not ``"face"``
    (landscapes, LSUN) is given resized and centre-cropped photos instead,
    with a warning.
    """
    domain = generator.domain
    if requested and domain is not None and domain != "face":
        warnings.warn(
            f"align: the generator makes {domain} pictures, not faces; the photo is resized "
            "and centre-cropped instead",
            stacklevel=2,
        )
        return False
    return requested


def check_domain(inverter: Inverter, name: str, generator: Generator) -> None:
    """Refuse an inverter trained for other pictures than the generator makes (e4e on landscapes)."""
    domains, domain = inverter.domains, generator.domain
    if domains is not None and domain is not None and domain not in domains:
        raise ConfigError(
            f"inverter {name!r} is made for {', '.join(domains)} pictures but the generator "
            f"makes {domain} pictures",
            hint="projection works with any generator: --method projection, or "
            "type = 'projection' in [inversion]",
        )


# -- the cache ------------------------------------------------------------------------


def inversion_key(
    photo: PreparedPhoto, generator_identity: dict[str, Any], inverter_identity: dict[str, Any]
) -> dict[str, Any]:
    """Everything an inversion depends on: the cache key (and part of ``invert.json``).

    The two identities are computed once per run (:func:`generator_identity`,
    :func:`inverter_identity`): they hash weights files, which may be large.
    """
    return {
        "photo": photo.sha256,
        "aligned": photo.aligned,
        "resolution": int(photo.image.shape[-1]),
        "generator": generator_identity,
        **inverter_identity,
    }


def inverter_identity(inverter: Inverter, name: str) -> dict[str, Any]:
    """The inverter's name, settings and the sha256 of its weights."""
    from soundguide.core.files import sha256_file

    return {
        "inverter": name,
        "settings": inverter.identity(),
        "weights": {str(p.name): sha256_file(p) for p in inverter.files()},
    }


def generator_identity(generator: Generator, type_name: str) -> dict[str, Any]:
    """The generator's type and the sha256 of its weights (the files it read)."""
    from soundguide.core.files import sha256_file

    return {"type": type_name, "files": [sha256_file(p) for p in generator.files()]}


def _read_cache(path: Path, generator: Generator) -> tuple[torch.Tensor, list | None] | None:
    if not path.is_file():
        return None
    try:
        data = torch.load(path, weights_only=True, map_location="cpu")
        latent, noise = data["latent"], data.get("noise")
    except Exception:
        return None  # unreadable: inverted again and replaced
    expected = (1, generator.num_layers, generator.latent_dim)
    if not isinstance(latent, torch.Tensor) or tuple(latent.shape) != expected:
        return None
    maps = generator.noise_maps()
    if noise is not None and (
        not isinstance(noise, list)
        or len(noise) != len(maps)
        or any(tuple(a.shape[1:]) != tuple(b.shape[1:]) for a, b in zip(noise, maps, strict=False))
    ):
        return None
    tensors = [latent, *(noise or [])]
    if not all(t.is_floating_point() and bool(torch.isfinite(t).all()) for t in tensors):
        return None
    return latent, noise


def _write_cache(path: Path, latent: torch.Tensor, noise: list | None) -> None:
    from soundguide.core.files import atomic_write, os_reason

    data = {"latent": latent, "noise": noise}
    try:
        atomic_write(path, lambda fh: torch.save(data, fh))
    except OSError as exc:  # a cache that cannot be written only costs time
        warnings.warn(f"cannot write cache file {path}: {os_reason(exc)}", stacklevel=3)


# -- inverting ------------------------------------------------------------------------


def invert_photo(
    photo: PreparedPhoto,
    generator: Generator,
    inverter: Inverter,
    context: RunContext,
    *,
    key: dict[str, Any] | None = None,
    lpips: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    stop: Callable[[], bool] | None = None,
) -> PhotoInversion:
    """Invert one prepared photo (or take its inversion from the cache when ``key`` is given).

    ``lpips(a, b)`` (images (1, 3, R, R) in [-1, 1] -> (1,)) adds the LPIPS
    distance of the reconstruction to the metrics. A stopped inversion
    (``stop()`` became true) is returned but never cached.
    """
    started = time.perf_counter()
    device = context.device
    cache = context.keyed_cache_path("inversions", key) if key is not None else None
    found = _read_cache(cache, generator) if cache is not None else None
    history: dict[str, list[list[float]]] = {}
    if found is not None:
        latent, noise = found
        cached = True
    else:
        result = inverter.invert(photo.image[None].to(device), generator, stop=stop)
        latent, noise = _checked(result, generator, photo)
        history = result.history
        cached = False
        if cache is not None and not (stop is not None and stop()):
            _write_cache(cache, latent, noise)
    reconstruction = render(generator, latent, noise)
    seconds = time.perf_counter() - started
    metrics = reconstruction_metrics(reconstruction, photo.image, lpips)
    return PhotoInversion(
        photo, latent, noise, reconstruction[0], metrics, seconds, cached, history
    )


def _checked(
    result: Inversion, generator: Generator, photo: PreparedPhoto
) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    from soundguide.core.errors import PluginError

    expected = (1, generator.num_layers, generator.latent_dim)
    latent = getattr(result, "latent", None)
    if not isinstance(latent, torch.Tensor) or tuple(latent.shape) != expected:
        got = tuple(latent.shape) if isinstance(latent, torch.Tensor) else type(latent).__name__
        raise PluginError(f"the inverter returned a latent of shape {got}, expected {expected}")
    if not bool(torch.isfinite(latent).all()):
        raise ImageError(
            f"inverting photo {photo.path} gave a non-finite latent",
            hint="try another inverter or fewer steps; the photo may be unusual (all one colour?)",
        )
    noise = result.noise
    if noise is not None:
        noise = [n.detach().float().cpu() for n in noise]
    return latent.detach().float().cpu(), noise


def render(
    generator: Generator, latent: torch.Tensor, noise: list[torch.Tensor] | None
) -> torch.Tensor:
    """The generator's image of ``latent`` with ``noise`` (its own maps when None), on the CPU."""
    device = generator_device(generator)
    with torch.no_grad():
        if noise is not None:
            generator.use_noise([n.to(device) for n in noise])
        try:
            image = generator.synthesize(latent.to(device))
        finally:
            if noise is not None:
                generator.use_noise(None)
    return image.detach().float().cpu()


def generator_device(generator: Generator) -> torch.device:
    return generator.context.device


def reconstruction_metrics(
    reconstruction: torch.Tensor,
    target: torch.Tensor,
    lpips: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, float | None]:
    """MSE and PSNR on [0, 1] pixels, and LPIPS (None without a network).

    Input: (n, 3, R, R) or (3, R, R) images in [-1, 1].
    """
    a = reconstruction.reshape(-1, *reconstruction.shape[-3:]).float().clamp(-1, 1)
    b = target.reshape(-1, *target.shape[-3:]).float().to(a.device)
    mse = float(((a - b) / 2).pow(2).mean())
    psnr = math.inf if mse == 0 else 10 * math.log10(1.0 / mse)
    distance = None
    if lpips is not None:
        with torch.no_grad():
            distance = float(lpips(a, b).mean())
    return {"mse": mse, "psnr": psnr, "lpips": distance}


# -- the start of an edit -----------------------------------------------------------


@dataclass
class PhotoStart:
    """What an edit that starts from ``optimization.image`` photos begins with."""

    latent: torch.Tensor
    """(k, L, D) on the CPU, one row per photo."""
    noise: list[torch.Tensor] | None
    """Tuned noise maps, each (k, 1, h, w), or None (the generator's own)."""
    photos: torch.Tensor
    """(k, 3, R, R) in [-1, 1]: the prepared (aligned or cropped) photos."""
    records: list[dict[str, Any]]
    """One per photo, for ``run.json``: path, sha256, method, cached, metrics, seconds."""
    files: list[Path]
    """Weights files the inverter read."""


def start_from_photos(
    paths: list[Path],
    inversion_config: Any,
    registries: Any,
    generator: Generator,
    generator_type: str,
    context: RunContext,
    *,
    stop: Callable[[], bool] | None = None,
) -> PhotoStart:
    """Prepare and invert each photo (one at a time; cached), as an edit's start."""
    name = inversion_config.type
    inverter = registries.inverters.get(name)(inversion_config, context)
    check_domain(inverter, name, generator)
    align = should_align(inversion_config.align, generator)
    identity = generator_identity(generator, generator_type)
    method = inverter_identity(inverter, name)
    results: list[PhotoInversion] = []
    for i, path in enumerate(paths):
        what = f"optimization.image.{i} photo" if len(paths) > 1 else "photo"
        photo = prepare_photo(path, generator.resolution, align=align, what=what)
        key = inversion_key(photo, identity, method)
        lpips = getattr(inverter, "lpips_distance", None)
        results.append(
            invert_photo(photo, generator, inverter, context, key=key, lpips=lpips, stop=stop)
        )
    noise = None
    if all(r.noise is not None for r in results):
        noise = [torch.cat(maps) for maps in zip(*(r.noise for r in results), strict=True)]
    records = [
        {
            "path": str(r.photo.path),
            "sha256": r.photo.sha256,
            "aligned": r.photo.aligned,
            "inverter": name,
            "cached": r.cached,
            "seconds": r.seconds,
            **{k: v for k, v in r.metrics.items() if v is not None},
        }
        for r in results
    ]
    return PhotoStart(
        latent=torch.cat([r.latent for r in results]),
        noise=noise,
        photos=torch.stack([r.photo.image for r in results]),
        records=records,
        files=list(inverter.files()),
    )
