"""Zero-shot audio classification: audio embeddings against CLIP text embeddings of class prompts.

Each class is represented by the mean of the L2-normalized CLIP text
embeddings of its prompts (one per template, e.g. ``"the sound of {label}"``
with ``label`` the cleaned class name; templates and cleaning are those of
training, see :mod:`soundguide.evaluation.prompts`), normalized again. A clip is assigned
the class of highest cosine similarity with its L2-normalized audio
embedding. Nothing is trained, so every clip is a test clip; folds only
split the accuracy as the official protocol reports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from soundguide.core.errors import ConfigError
from soundguide.evaluation.datasets import AudioDataset
from soundguide.evaluation.embedders import AudioEmbedder, describe_embedder
from soundguide.evaluation.encoding import DatasetEmbeddings, embed_dataset
from soundguide.evaluation.metrics import classification_metrics
from soundguide.evaluation.prompts import DEFAULT_TEMPLATES, check_templates, class_prompts

PAPER_ZEROSHOT_TOP1 = {"esc50": 0.578, "urbansound8k": 0.457}
"""Zero-shot top-1 reported by Lee et al. (CVPR 2022) for the released SoundCLIP encoder."""


class TextEncoder(Protocol):
    """What the text side needs: prompts -> (N, D) (e.g. :class:`~soundguide.encoders.clip.CLIPEncoder`)."""

    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor: ...


@torch.no_grad()
def text_classifier(
    text_encoder: TextEncoder,
    class_names: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    *,
    clean: bool = True,
    chunk: int = 256,
) -> torch.Tensor:
    """One unit vector per class: the renormalized mean of its prompts' normalized embeddings.

    Output: (K, D) float32 on the text encoder's device.
    """
    prompts = class_prompts(class_names, templates, clean=clean)
    flat = [p for per_class in prompts for p in per_class]
    embeddings = torch.cat(
        [text_encoder.encode_text(flat[i : i + chunk]).float() for i in range(0, len(flat), chunk)]
    )
    per_template = F.normalize(embeddings, dim=-1).view(len(prompts), len(prompts[0]), -1)
    return F.normalize(per_template.mean(dim=1), dim=-1)


def zero_shot_scores(audio: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
    """Cosine similarities. Input: audio (N, D), classifier (K, D). Output: (N, K) float32 (CPU)."""
    if audio.shape[-1] != classifier.shape[-1]:
        raise ConfigError(
            f"audio embeddings have {audio.shape[-1]} dimensions but the text embeddings have "
            f"{classifier.shape[-1]}: the audio encoder was not trained into this CLIP model's space",
            hint="pair the audio encoder with the CLIP model it was trained with (--clip-model)",
        )
    audio = F.normalize(audio.float().cpu(), dim=-1)
    return audio @ classifier.float().cpu().T


@dataclass
class ZeroShotResult:
    """Everything a zero-shot report holds."""

    dataset: AudioDataset
    metrics: dict[str, Any]
    templates: tuple[str, ...]
    prompts: list[list[str]]
    encoding: DatasetEmbeddings
    embedder: dict[str, Any]
    text_model: str | None = None
    predicted: list[int] = field(default_factory=list)
    """Predicted class index per embedded clip (rows of ``encoding``)."""

    @property
    def top1(self) -> float:
        return float(self.metrics["top1"])

    @property
    def top5(self) -> float:
        return float(self.metrics["top5"])


def zero_shot(
    dataset: AudioDataset,
    embedder: AudioEmbedder,
    text_encoder: TextEncoder,
    *,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    clean_labels: bool = True,
    text_model: str | None = None,
    batch_size: int = 32,
    workers: int = 2,
    cache: bool = True,
    cache_dir: Any = None,
    skip_bad_audio: bool = False,
    progress: bool = False,
) -> ZeroShotResult:
    """Zero-shot classification of every clip of ``dataset``.

    ``embedder`` is any :class:`~soundguide.evaluation.embedders.AudioEmbedder`;
    its embeddings are cached (see :func:`~soundguide.evaluation.encoding.embed_dataset`).
    ``text_encoder`` embeds the class prompts (a ``CLIPEncoder``); ``text_model``
    only names it in the report. ``clean_labels=False`` puts the class names
    into the templates as the dataset spells them (``crackling_fire``), as the
    original authors' zero-shot script did.
    """
    templates = check_templates(templates)
    classifier = text_classifier(text_encoder, dataset.class_names, templates, clean=clean_labels)
    encoded = embed_dataset(
        dataset,
        embedder,
        batch_size=batch_size,
        workers=workers,
        cache=cache,
        cache_dir=cache_dir,
        skip_bad_audio=skip_bad_audio,
        progress=progress,
    )
    scores = zero_shot_scores(encoded.embeddings, classifier)
    clips = [dataset.clips[i] for i in encoded.indices]
    metrics = classification_metrics(
        scores, [c.label for c in clips], [c.fold for c in clips], dataset.class_names
    )
    predicted = metrics.pop("predicted")
    return ZeroShotResult(
        dataset=dataset,
        metrics=metrics,
        templates=templates,
        prompts=class_prompts(dataset.class_names, templates, clean=clean_labels),
        encoding=encoded,
        embedder=describe_embedder(embedder),
        text_model=text_model,
        predicted=predicted,
    )
