"""Guidance ``text``: pull the image towards the CLIP embedding of a prompt.

A list of prompts gives one target per batch item. Prompts longer than CLIP's
77 tokens are refused with a message naming the prompt.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

import soundguide
from soundguide.plugins.clip_space import CLIPGuidance, CLIPGuidanceConfig


class TextGuidance(CLIPGuidance):
    class Config(CLIPGuidanceConfig):
        type: Literal["text"] = "text"
        prompt: str | list[str] = Field(
            description="What the image should show, e.g. 'a burning forest'; a list: one per item."
        )

    config: Config

    @property
    def num_items(self) -> int | None:
        return len(self.config.prompt) if isinstance(self.config.prompt, list) else None

    def target(self, encoder) -> torch.Tensor:
        prompts = self.config.prompt
        key = {"prompts": prompts, **self.clip_key()}
        count = len(prompts) if isinstance(prompts, list) else 1
        target = self.context.cached_tensor(
            "text_targets",
            key,
            lambda: encoder.encode_text(prompts),
            shape=(count, encoder.embed_dim),
        )
        return target if isinstance(prompts, list) else target[0]


@soundguide.hookimpl
def register_guidances(registry):
    registry.add(TextGuidance)
