"""Reading pictures that users give (reference images, photos): memory bounded by a pixel limit.

The size is read from the file's header before anything is decoded, so a
decompression bomb (a few kilobytes claiming 20000 x 20000 pixels) is refused
at once, and every way a file can be unusable ends in one :class:`ImageError` line.

Pictures come out as 8-bit RGB the way a viewer shows them: the EXIF
orientation of phone photos is applied, grayscale is repeated to three
channels, 16-bit grayscale is scaled to 8 bits (PIL's own conversion would
clip it to white), and transparency is either dropped or, for photos that
become the start of an edit, refused (what lies under a transparent pixel is
arbitrary).
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

from soundguide.core.errors import ImageError

MAX_PIXELS = 64_000_000
"""Largest picture read (width x height): 64 megapixels, e.g. 9238 x 6928. A 48 MP
phone photo fits; decoded as RGB it takes 3 bytes per pixel (192 MB at the limit)."""


def open_rgb(
    path: str | os.PathLike[str],
    *,
    what: str = "image",
    max_pixels: int = MAX_PIXELS,
    transparency: str = "drop",
):
    """A picture file as an 8-bit RGB ``PIL.Image`` (decoded), refusing more than ``max_pixels``.

    ``transparency``: ``"drop"`` ignores an alpha channel, ``"refuse"`` raises
    :class:`ImageError` for a picture with any pixel that is not fully opaque.
    Raises :class:`ImageError` naming ``what`` and the file for a missing file,
    a folder, a file that is not a picture, a truncated one, too many pixels,
    or a floating-point picture.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    hint = f"use a PNG or JPEG picture of at most {max_pixels / 1e6:g} megapixels"
    try:
        with warnings.catch_warnings():
            # PIL warns above its own limit; the check below is ours
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            picture = Image.open(path)
        with picture:
            width, height = picture.size
            if width * height > max_pixels:
                raise _too_large(what, path, f"{width} x {height} = ", width * height, max_pixels)
            picture.load()
            if transparency == "refuse":
                _refuse_transparency(picture, what, path)
            return _to_rgb(ImageOps.exif_transpose(picture), what, path)
    except Image.DecompressionBombError as exc:  # PIL refused at open (far above our limit)
        found = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = int(found.group(1)) if found else None
        raise _too_large(what, path, "", pixels, max_pixels) from None
    except FileNotFoundError:
        raise ImageError(
            f"{what} not found: {path}", hint="relative paths resolve against the config's folder"
        ) from None
    except IsADirectoryError:
        raise ImageError(f"{what} {path} is a directory, not a picture") from None
    except UnidentifiedImageError:
        raise ImageError(
            f"cannot read {what} {path}: not a picture file PIL knows", hint=hint
        ) from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"cannot read {what} {path}: {exc}", hint=hint) from None


def _refuse_transparency(picture, what: str, path: Path) -> None:
    if picture.mode == "P" and "transparency" in picture.info:
        picture = picture.convert("RGBA")
    if picture.mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        low, _high = picture.getchannel("A").getextrema()
        if low < 255:
            raise ImageError(
                f"{what} {path} has transparent pixels: what lies under them is arbitrary, "
                "so it cannot be inverted as it is",
                hint="flatten it onto a background first (e.g. save it as a JPEG)",
            )


def _to_rgb(picture, what: str, path: Path):
    """8-bit RGB: 16-bit grayscale scaled (not clipped), float pictures refused."""
    import numpy as np
    from PIL import Image

    if picture.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        values = np.asarray(picture, dtype=np.float64)
        if values.min() < 0 or values.max() > 65535:
            raise ImageError(
                f"cannot read {what} {path}: 32-bit integer pixels outside 0..65535",
                hint="save it as an 8- or 16-bit PNG or a JPEG",
            )
        # 16-bit samples: 65535 is white (PIL's convert("RGB") would clip at 255)
        gray = np.round(values / 257.0).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if picture.mode == "F":
        raise ImageError(
            f"cannot read {what} {path}: floating-point pixels have no fixed white level",
            hint="save it as an 8- or 16-bit PNG or a JPEG",
        )
    return picture.convert("RGB")


def _too_large(what: str, path: Path, size: str, pixels: int | None, limit: int) -> ImageError:
    amount = f"{size}{pixels / 1e6:.1f} megapixels" if pixels else "far too many pixels"
    return ImageError(
        f"{what} {path} is {amount}, more than the {limit / 1e6:g} megapixels soundguide reads "
        "(a decompression bomb?)",
        hint=f"use a PNG or JPEG picture of at most {limit / 1e6:g} megapixels",
    )
