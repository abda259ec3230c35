"""Pictures from users: decompression bombs and broken files are one-line errors."""

from __future__ import annotations

import struct
import warnings
import zlib

import pytest
from PIL import Image

from soundguide.cli import main
from soundguide.core.errors import ImageError
from soundguide.core.images import MAX_PIXELS, open_rgb
from soundguide.plugins.image import load_picture
from tests.factories import save_tiny_clip


def png_claiming(path, width: int, height: int):
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (its data is cut short)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = zlib.compress(b"\x00" * 64)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )
    return path


@pytest.mark.parametrize(
    "size",
    [(20000, 20000), (10000, 7000), (9000, 9000)],  # above PIL's own error, above its warning, ours
    ids=["400MP", "70MP", "81MP"],
)
def test_decompression_bomb_is_refused_from_the_header(tmp_path, size):
    path = png_claiming(tmp_path / "bomb.png", *size)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no PIL warning either
        with pytest.raises(ImageError, match=r"megapixels") as info:
            open_rgb(path, what="reference image")
    assert str(path) in info.value.message and "64 megapixels" in info.value.hint


def test_pixel_limit_is_the_stated_one(tmp_path):
    assert MAX_PIXELS == 64_000_000
    path = tmp_path / "ok.png"
    Image.new("RGB", (40, 30), (10, 20, 30)).save(path)
    assert open_rgb(path).size == (40, 30)
    with pytest.raises(ImageError, match="40 x 30 = 0.0 megapixels"):
        open_rgb(path, max_pixels=1000)


def test_truncated_and_bogus_pictures(tmp_path):
    good = tmp_path / "good.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(good)
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:60])
    with pytest.raises(ImageError, match="cannot read photo .*cut.png"):
        open_rgb(cut, what="photo")
    bogus = tmp_path / "bogus.jpg"
    bogus.write_bytes(b"not a picture at all")
    with pytest.raises(ImageError, match="not a picture file"):
        open_rgb(bogus)
    with pytest.raises(ImageError, match="not found") as info:
        open_rgb(tmp_path / "missing.png")
    assert "relative paths" in info.value.hint
    with pytest.raises(ImageError, match="is a directory"):
        open_rgb(tmp_path)


def test_reference_image_loader_uses_the_limit(tmp_path):
    with pytest.raises(ImageError, match="reference image .* megapixels"):
        load_picture(png_claiming(tmp_path / "bomb.png", 20000, 20000), 224)


def test_cli_reports_a_bomb_in_one_line(tmp_path, write_config, capsys):
    png_claiming(tmp_path / "bomb.png", 20000, 20000)
    clip = save_tiny_clip(tmp_path / "clip.pt", seed=0)
    path = write_config(
        f"""
        [generator]
        type = "toy"
        size = 32

        [[guidance]]
        type = "image"
        path = "bomb.png"
        clip_model = "{clip}"
        """
    )
    assert main(["-p", "tests.toy_plugins", "edit", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("error: reference image ") and "megapixels" in err[0]
    assert err[1].startswith("hint: ") and "Traceback" not in "\n".join(err)
