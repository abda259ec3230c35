"""Guidance ``image``: pull the image towards the CLIP embedding of a reference picture.

The picture is centre-cropped to a square, resized to CLIP's input size and
encoded once per run (cached on disk by its content and the settings). A list
of paths gives one target per batch item.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field

import soundguide
from soundguide import ConfigPath
from soundguide.plugins.clip_space import CLIPGuidance, CLIPGuidanceConfig, FileSources


def load_picture(path: Path, size: int) -> torch.Tensor:
    """A picture file as a (3, size, size) tensor in [-1, 1]: centre square crop, bicubic resize.

    Read with :func:`soundguide.core.images.open_rgb` (at most ``MAX_PIXELS`` pixels).
    """
    from PIL import Image

    from soundguide.core.images import open_rgb

    picture = open_rgb(path, what="reference image")
    w, h = picture.size
    side = min(w, h)
    box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
    picture = picture.resize((size, size), Image.Resampling.BICUBIC, box=box)
    array = np.asarray(picture, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


class ImageGuidance(FileSources, CLIPGuidance):
    class Config(CLIPGuidanceConfig):
        type: Literal["image"] = "image"
        path: ConfigPath | list[ConfigPath] = Field(
            description="A reference picture (PNG, JPEG...), or a list: one per batch item."
        )

    config: Config

    def __init__(self, config: Config, context) -> None:
        super().__init__(config, context)
        from soundguide.core.errors import ImageError

        for path in self.paths:
            if not path.is_file():
                raise ImageError(
                    f"reference image not found: {path}",
                    hint="relative paths resolve against the config's folder",
                )

    def target(self, encoder) -> torch.Tensor:
        from soundguide.core.files import sha256_file

        key = {"images": [sha256_file(p) for p in self.paths], **self.clip_key()}
        target = self.context.cached_tensor(
            "image_targets",
            key,
            lambda: self._embed(encoder),
            shape=(len(self.paths), encoder.embed_dim),
        )
        return self.one_or_all(target)

    def _embed(self, encoder) -> torch.Tensor:
        size = encoder.input_resolution
        pictures = torch.stack([load_picture(p, size) for p in self.paths])
        pictures = pictures.to(self.context.device)
        # the reference is encoded without random cutouts: one fixed target
        return encoder.model.encode_image(encoder.preprocess(pictures)).float()

    def files(self) -> list[Path]:
        return [*self.paths, *super().files()]


@soundguide.hookimpl
def register_guidances(registry):
    registry.add(ImageGuidance)
