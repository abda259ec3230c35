"""The text side of training: prompt templates, CLIP's token limit, and frozen text targets.

Label items are read through the templates of :mod:`soundguide.evaluation.prompts`
(their one owner, shared with zero-shot evaluation); training
picks one template per item and epoch at random (light text augmentation) and
zero-shot classification averages the normalized embeddings of all templates,
as CLIP's prompt ensembling does. Captions are used as written.

Every embedding is computed once, before training (never per batch):
``(templates, labels, D)`` for labels, ``(captions, D)`` for captions and
``(labels, D)`` for zero-shot classes, all L2-normalized.

Label handling (documented choice): ``curate`` skips and lists items whose text
is empty or longer than CLIP's 77 tokens; ``train`` refuses, with one
:class:`DatasetError` line naming the label and the template, a template that
makes a label too long (that is a setting to fix, not an item to drop).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from soundguide.core.errors import DatasetError
from soundguide.evaluation.prompts import check_templates, prompt

CONTEXT_LENGTH = 77
"""CLIP's text context, start and end tokens included."""


def token_count(text: str) -> int:
    """CLIP tokens of ``text``, start and end tokens included: the tokenizer of
    :class:`~soundguide.encoders.clip.CLIPEncoder` (``clip``'s)."""
    from soundguide.encoders.clip import token_count

    return token_count(text)


def text_problem(text: str, context_length: int = CONTEXT_LENGTH) -> str | None:
    """Why CLIP cannot read ``text`` (empty, too long), or None."""
    if not text.strip():
        return "empty label and caption"
    count = token_count(text)
    if count > context_length:
        return (
            f"label or caption is {count} tokens long; CLIP takes at most {context_length} "
            "(start and end tokens included)"
        )
    return None


class TextTargets:
    """Frozen, normalized CLIP text embeddings of a label set and a caption set.

    Attributes:
        label_embeddings: (T, L, D), template ``t`` applied to label ``l``.
        caption_embeddings: (C, D).
        class_embeddings: (L, D), the normalized mean over templates (zero-shot).
    """

    def __init__(
        self,
        encoder: Any,
        labels: Sequence[str],
        captions: Sequence[str],
        templates: Sequence[str],
        *,
        device: torch.device | str = "cpu",
        batch_size: int = 256,
    ) -> None:
        self.templates = list(check_templates(templates))
        self.labels = list(labels)
        self.captions = list(captions)
        context = int(getattr(encoder, "context_length", CONTEXT_LENGTH))
        for label in self.labels:
            for template in self.templates:
                text = prompt(template, label)
                count = token_count(text)
                if count > context:
                    raise DatasetError(
                        f"label {label!r} with template {template!r} is {count} tokens long; "
                        f"CLIP takes at most {context}",
                        hint="shorten the template (--template) or curate with shorter labels",
                    )
        for caption in self.captions:
            problem = text_problem(caption, context)
            if problem is not None:
                raise DatasetError(f"caption {caption[:60]!r}: {problem}")
        dim = int(encoder.embed_dim)
        with torch.no_grad():
            prompts = [prompt(t, lab) for t in self.templates for lab in self.labels]
            flat = self._encode(encoder, prompts, batch_size, dim, device)
            self.label_embeddings = flat.view(len(self.templates), len(self.labels), dim)
            self.caption_embeddings = self._encode(encoder, self.captions, batch_size, dim, device)
            self.class_embeddings = (
                F.normalize(self.label_embeddings.mean(dim=0), dim=-1)
                if self.labels
                else torch.zeros(0, dim, device=device)
            )
        self.dim = dim

    @staticmethod
    def _encode(
        encoder: Any, prompts: list[str], batch_size: int, dim: int, device: torch.device | str
    ) -> torch.Tensor:
        if not prompts:
            return torch.zeros(0, dim, device=device)
        chunks = [
            encoder.encode_text(prompts[i : i + batch_size]).float()
            for i in range(0, len(prompts), batch_size)
        ]
        return F.normalize(torch.cat(chunks), dim=-1).to(device)

    def lookup(
        self, label: torch.Tensor, caption: torch.Tensor, template: torch.Tensor
    ) -> torch.Tensor:
        """The text target of each item: its caption, else its label through its template.

        Input: (B,) int64 each (-1 where absent). Output: (B, D) normalized.
        """
        dim = self.dim
        out = torch.empty(label.shape[0], dim, device=self.label_embeddings.device)
        has_caption = caption >= 0
        if bool(has_caption.any()):
            out[has_caption] = self.caption_embeddings[caption[has_caption]]
        if bool((~has_caption).any()):
            rows = ~has_caption
            out[rows] = self.label_embeddings[template[rows], label[rows]]
        return out
