"""Reading pictures that users give (reference images, photos): memory bounded by a pixel limit.

The size is read from the file's header before anything is decoded, so a
decompression bomb (a few kilobytes claiming 20000 x 20000 pixels) is refused
at once, and every way a file can be unusable ends in one :class:`ImageError` line.
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


def open_rgb(path: str | os.PathLike[str], *, what: str = "image", max_pixels: int = MAX_PIXELS):
    """A picture file as an RGB ``PIL.Image`` (decoded), refusing more than ``max_pixels``.

    Raises :class:`ImageError` naming ``what`` and the file for a missing file,
    a folder, a file that is not a picture, a truncated one, or too many pixels.
    """
    from PIL import Image, UnidentifiedImageError

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
            return picture.convert("RGB")
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


def _too_large(what: str, path: Path, size: str, pixels: int | None, limit: int) -> ImageError:
    amount = f"{size}{pixels / 1e6:.1f} megapixels" if pixels else "far too many pixels"
    return ImageError(
        f"{what} {path} is {amount}, more than the {limit / 1e6:g} megapixels soundguide reads "
        "(a decompression bomb?)",
        hint=f"use a PNG or JPEG picture of at most {limit / 1e6:g} megapixels",
    )
