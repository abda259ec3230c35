"""The confusion-matrix PNG of a zero-shot report, drawn with Pillow (no matplotlib).

Rows are true classes, columns predicted ones, each cell shaded by the
row-normalized share; class names run along the left and the top.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

from soundguide.core.files import atomic_write

LABEL_SPACE = 150
"""Pixels for the class names left of the rows and above the columns."""
TITLE_SPACE = 28
MARGIN = 10


def confusion_cell_size(num_classes: int) -> int:
    """Side of one cell in pixels: 32 for a few classes, down to 8 for many."""
    return max(8, min(32, 640 // max(1, num_classes)))


def confusion_png_size(num_classes: int) -> tuple[int, int]:
    """(width, height) of :func:`confusion_png`'s image."""
    grid = num_classes * confusion_cell_size(num_classes)
    return LABEL_SPACE + grid + MARGIN, TITLE_SPACE + LABEL_SPACE + grid + MARGIN


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def _fit(draw, text: str, font, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def confusion_png(
    matrix: Sequence[Sequence[int]], labels: Sequence[str], path: str | os.PathLike[str], title: str
) -> Path:
    """Draw a confusion matrix (rows true, columns predicted) to a PNG with Pillow.

    Cells are shaded by the row-normalized share (white 0 to dark blue 1);
    counts are written in cells of at least 20 px. Size: :func:`confusion_png_size`.
    """
    from PIL import Image, ImageDraw

    k = len(labels)
    cell = confusion_cell_size(k)
    width, height = confusion_png_size(k)
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = _font(max(8, min(12, cell - 2)))
    top, left = TITLE_SPACE + LABEL_SPACE, LABEL_SPACE
    draw.text(
        (MARGIN, 6), _fit(draw, title, _font(14), width - 2 * MARGIN), fill="black", font=_font(14)
    )
    draw.text((MARGIN, TITLE_SPACE + 8), "rows: true class", fill="gray", font=_font(11))
    draw.text((MARGIN, TITLE_SPACE + 24), "columns: predicted", fill="gray", font=_font(11))
    for i, row in enumerate(matrix):
        total = sum(row)
        for j, count in enumerate(row):
            share = count / total if total else 0.0
            color = tuple(int(round(255 - share * (255 - c))) for c in (8, 48, 107))
            box = (
                left + j * cell,
                top + i * cell,
                left + (j + 1) * cell - 1,
                top + (i + 1) * cell - 1,
            )
            draw.rectangle(box, fill=color, outline=(220, 220, 220) if cell >= 16 else None)
            if cell >= 20 and count:
                text = str(count)
                ink = "white" if share > 0.5 else "black"
                tw = draw.textlength(text, font=font)
                draw.text(
                    (box[0] + (cell - tw) / 2, box[1] + cell / 2 - 6), text, fill=ink, font=font
                )
    for i, label in enumerate(labels):
        text = _fit(draw, label, font, LABEL_SPACE - 8)
        tw = draw.textlength(text, font=font)
        draw.text((left - 4 - tw, top + i * cell + cell / 2 - 6), text, fill="black", font=font)
        # column labels: drawn horizontally on a strip, then turned to read bottom-up
        strip = Image.new("RGB", (LABEL_SPACE - 4, cell), "white")
        ImageDraw.Draw(strip).text((2, cell / 2 - 6), text, fill="black", font=font)
        image.paste(strip.rotate(90, expand=True), (left + i * cell, TITLE_SPACE + 4))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return atomic_write(path, lambda fh: fh.write(buffer.getvalue()))
