"""Photos as start points: reading (bad photos), preparing, inverting, the cache, metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from soundguide.core.errors import ConfigError, ImageError, PluginError
from soundguide.core.images import open_rgb
from soundguide.core.interfaces import RunContext
from soundguide.inversion.photos import (
    check_domain,
    inversion_key,
    invert_photo,
    inverter_identity,
    prepare_photo,
    reconstruction_metrics,
    should_align,
)
from tests import toy_plugins
from tests.core.test_images import png_claiming


def _photo(tmp_path, name="photo.png", size=(48, 40), mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    picture = Image.fromarray(array, "RGB").convert(mode)
    path = tmp_path / name
    picture.save(path)
    return path


# -- reading ----------------------------------------------------------------------------


def test_bad_photos_are_one_line_errors_naming_the_photo(tmp_path):
    good = _photo(tmp_path, "good.jpg")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    text = tmp_path / "notes.jpg"
    text.write_text("not a picture")
    bomb = png_claiming(tmp_path / "bomb.png", 20000, 20000)
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[0, 0, 3] = 10
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cutout.png")
    cases = {
        tmp_path / "missing.jpg": "photo not found",
        tmp_path: "is a directory",
        text: "not a picture file",
        truncated: "cannot read photo",
        bomb: "400.0 megapixels",
        tmp_path / "cutout.png": "transparent pixels",
    }
    for path, message in cases.items():
        with pytest.raises(ImageError, match=message) as info:
            prepare_photo(path, 32, align=False)
        assert "\n" not in str(info.value)
        assert str(path) in str(info.value)


def test_grayscale_and_opaque_rgba_photos_are_read_as_rgb(tmp_path):
    gray = _photo(tmp_path, "gray.png", mode="L")
    opaque = _photo(tmp_path, "opaque.png", mode="RGBA")
    for path in (gray, opaque):
        photo = prepare_photo(path, 32, align=False)
        assert photo.image.shape == (3, 32, 32)
    g = prepare_photo(gray, 32, align=False).image
    assert torch.equal(g[0], g[1]) and torch.equal(g[1], g[2])


def test_16_bit_grayscale_is_scaled_not_clipped_to_white(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    array = np.asarray(open_rgb(tmp_path / "deep.png"))
    assert array.dtype == np.uint8 and array.shape == (64, 64, 3)
    expected = np.round(ramp / 257.0)
    assert np.abs(array[..., 0].astype(float) - expected).max() <= 1
    assert 120 < array.mean() < 135  # PIL's own convert("RGB") gives about 255


def test_exif_orientation_is_applied(tmp_path):
    array = np.zeros((20, 40, 3), np.uint8)
    array[:, :20] = 255  # left half white
    picture = Image.fromarray(array)
    exif = picture.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to show
    picture.save(tmp_path / "phone.jpg", exif=exif)
    shown = open_rgb(tmp_path / "phone.jpg")
    assert shown.size == (20, 40)  # portrait, as a viewer shows it


def test_centre_crop_keeps_the_middle(tmp_path):
    array = np.zeros((40, 80, 3), np.uint8)
    array[:, 20:60] = 255  # a white square in the middle of a wide photo
    Image.fromarray(array).save(tmp_path / "wide.png")
    photo = prepare_photo(tmp_path / "wide.png", 16, align=False)
    assert photo.image.shape == (3, 16, 16)
    assert photo.image.min() > 0.9  # only the white middle is left
    assert photo.aligned is False and photo.quad is None


# -- alignment choices and domains -------------------------------------------------------


def _toy_generator(**config):
    cfg = toy_plugins.ToyGenerator.Config(**config)
    return toy_plugins.ToyGenerator(cfg, RunContext())


def test_align_falls_back_to_cropping_for_a_generator_of_other_pictures():
    assert should_align(True, _toy_generator(domain="face")) is True
    assert should_align(True, _toy_generator()) is True  # unknown: the user knows
    assert should_align(False, _toy_generator(domain="face")) is False
    with pytest.warns(UserWarning, match="landscape pictures, not faces"):
        assert should_align(True, _toy_generator(domain="landscape")) is False


def test_a_face_inverter_refuses_other_generators():
    face = toy_plugins.ToyInverter(toy_plugins.ToyInverter.Config(faces_only=True), RunContext())
    check_domain(face, "toy", _toy_generator(domain="face"))
    check_domain(face, "toy", _toy_generator())  # unknown domain: allowed
    with pytest.raises(ConfigError, match="made for face pictures but the generator makes car"):
        check_domain(face, "toy", _toy_generator(domain="car"))


# -- inverting and the cache ---------------------------------------------------------------


def _inverter(**config):
    return toy_plugins.ToyInverter(toy_plugins.ToyInverter.Config(**config), RunContext())


def test_invert_photo_reconstructs_and_caches(tmp_path):
    generator = _toy_generator(size=8, layers=4, dim=48)  # L*D >= 3*8*8: exactly invertible
    context = RunContext(cache_dir=tmp_path / "cache")
    photo = prepare_photo(_photo(tmp_path), 8, align=False)
    inverter = _inverter()
    key = inversion_key(photo, {"type": "toy"}, inverter_identity(inverter, "toy-inverter"))
    toy_plugins.reset()
    first = invert_photo(photo, generator, inverter, context, key=key)
    assert first.latent.shape == (1, 4, 48) and first.reconstruction.shape == (3, 8, 8)
    assert first.metrics["psnr"] > 40 and first.metrics["lpips"] is None
    assert not first.cached and toy_plugins.CALLS["inverter.invert"] == 1
    again = invert_photo(photo, generator, inverter, context, key=key)
    assert again.cached and toy_plugins.CALLS["inverter.invert"] == 1
    assert torch.equal(again.latent, first.latent)
    # other settings are another cache entry
    shifted = _inverter(shift=0.5)
    other = invert_photo(
        photo,
        generator,
        shifted,
        context,
        key=inversion_key(photo, {}, inverter_identity(shifted, "toy-inverter")),
    )
    assert not other.cached and other.metrics["psnr"] < first.metrics["psnr"]


def test_a_damaged_cache_file_is_inverted_again(tmp_path):
    generator = _toy_generator(size=8, layers=4, dim=48)
    context = RunContext(cache_dir=tmp_path / "cache")
    photo = prepare_photo(_photo(tmp_path), 8, align=False)
    inverter = _inverter()
    key = inversion_key(photo, {}, inverter_identity(inverter, "toy-inverter"))
    invert_photo(photo, generator, inverter, context, key=key)
    (entry,) = (tmp_path / "cache" / "inversions").iterdir()
    entry.write_bytes(b"garbage")
    again = invert_photo(photo, generator, inverter, context, key=key)
    assert not again.cached and again.metrics["psnr"] > 40


def test_a_stopped_inversion_is_not_cached(tmp_path):
    generator = _toy_generator(size=8, layers=4, dim=48)
    context = RunContext(cache_dir=tmp_path / "cache")
    photo = prepare_photo(_photo(tmp_path), 8, align=False)
    inverter = _inverter()
    key = inversion_key(photo, {}, inverter_identity(inverter, "toy-inverter"))
    invert_photo(photo, generator, inverter, context, key=key, stop=lambda: True)
    assert not (tmp_path / "cache" / "inversions").exists()


def test_a_non_finite_inversion_is_a_one_line_error(tmp_path):
    generator = _toy_generator(size=8, layers=4, dim=48)
    photo = prepare_photo(_photo(tmp_path), 8, align=False)
    with pytest.raises(ImageError, match="gave a non-finite latent"):
        invert_photo(photo, generator, _inverter(nan=True), RunContext())


def test_an_inverter_returning_the_wrong_shape_is_named(tmp_path):
    generator = _toy_generator(size=8, layers=4, dim=48)
    photo = prepare_photo(_photo(tmp_path), 8, align=False)

    class Wrong(toy_plugins.ToyInverter):
        def invert(self, images, generator, *, start=None, stop=None):
            return toy_plugins.Inversion(latent=torch.zeros(1, 3, 48))

    with pytest.raises(PluginError, match=r"latent of shape \(1, 3, 48\), expected \(1, 4, 48\)"):
        invert_photo(photo, generator, Wrong(Wrong.Config(), RunContext()), RunContext())


def test_reconstruction_metrics_against_formulas():
    a = torch.zeros(1, 3, 4, 4)
    b = torch.full((1, 3, 4, 4), 0.2)  # 0.1 apart on [0, 1] pixels
    m = reconstruction_metrics(a, b, lambda x, y: torch.tensor([0.25]))
    assert m["mse"] == pytest.approx(0.01)
    assert m["psnr"] == pytest.approx(20.0)
    assert m["lpips"] == 0.25
    assert reconstruction_metrics(a, a)["psnr"] == math.inf
