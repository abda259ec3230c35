"""Zero-shot audio classification: audio embeddings against CLIP text embeddings of class prompts.

Each class is represented by the mean of the L2-normalized CLIP text
embeddings of its prompts (one per template, e.g. ``"the sound of {label}"``
with ``label`` the cleaned class name; templates and cleaning are those of
training, see :mod:`soundguide.evaluation.prompts`), normalized again. A clip is assigned
the class of highest cosine similarity with its L2-normalized audio
embedding. Nothing is trained, so every clip is a test clip; folds only
split the accuracy as the official protocol reports it.

An evaluation protocol (:data:`PROTOCOLS`, ``--protocol``) names every setting
the accuracy depends on besides the weights: how a clip is fitted to the
encoder's 864-frame canvas (crop, pad, dB reference) and how classes become
prompts (labels, templates). ``soundguide`` (the default) is the encoder's
training setup; ``authors`` is the original authors' posted zero-shot script.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
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

PAPER_PROTOCOL = "authors"
"""The protocol the paper's zero-shot numbers were measured with (the authors' posted script)."""

LABEL_STYLES = ("raw", "clean")
"""Class names in prompts: as the dataset spells them (``crackling_fire``) or cleaned."""

CANVAS_SETTINGS = ("crop", "pad", "db_reference")
"""The protocol settings that the audio embedder applies."""


@dataclass(frozen=True)
class EvalProtocol:
    """A named set of evaluation settings; explicitly given ones replace its values.

    ``crop``, ``pad``, ``db_reference``: how a clip meets the encoder's
    864-frame canvas (:class:`~soundguide.evaluation.embedders.SoundCLIPEmbedder`);
    ``labels`` (:data:`LABEL_STYLES`) and ``templates``: the class prompts.
    ``overridden`` lists the settings that differ from the named protocol's.
    """

    name: str
    description: str
    crop: str
    pad: str
    db_reference: str
    labels: str
    templates: tuple[str, ...]
    overridden: tuple[str, ...] = ()

    def with_settings(self, **settings: Any) -> EvalProtocol:
        """This protocol with the given settings (None: keep the protocol's) replacing its own."""
        unknown = set(settings) - {*CANVAS_SETTINGS, "labels", "templates"}
        if unknown:
            raise ConfigError(f"unknown protocol setting(s): {', '.join(sorted(unknown))}")
        changed = {}
        for key, value in settings.items():
            if value is None:
                continue
            value = check_templates(value) if key == "templates" else value
            if key == "labels" and value not in LABEL_STYLES:
                raise ConfigError(f"labels must be raw or clean, got {value!r}")
            if value != getattr(self, key):
                changed[key] = value
        if not changed:
            return self
        overridden = tuple(dict.fromkeys([*self.overridden, *changed]))
        return replace(self, **changed, overridden=overridden)

    @property
    def clean_labels(self) -> bool:
        return self.labels == "clean"

    def to_dict(self, *, prompts: bool = True) -> dict[str, Any]:
        """The report's ``protocol`` section; ``prompts=False`` leaves out labels and
        templates (a linear probe uses neither)."""
        data = asdict(self)
        data["templates"] = list(self.templates)
        data["overridden"] = list(self.overridden)
        if not prompts:
            del data["labels"], data["templates"]
        return data

    def label(self) -> str:
        """The name, with the changed settings: ``authors (crop=start)``."""
        if not self.overridden:
            return self.name
        changed = ", ".join(
            f"{k}={'|'.join(self.templates) if k == 'templates' else getattr(self, k)}"
            for k in self.overridden
        )
        return f"{self.name} ({changed})"

    def summary(self, *, prompts: bool = True) -> str:
        """One line for a Markdown report."""
        parts = [
            f"crop `{self.crop}`",
            f"pad `{self.pad}`",
            f"dB reference `{self.db_reference}`",
        ]
        if prompts:
            parts.append(f"labels `{self.labels}`")
            parts.append("prompts " + ", ".join(f"`{t}`" for t in self.templates))
        changed = f" (changed: {', '.join(self.overridden)})" if self.overridden else ""
        return f"Protocol `{self.name}`{changed}: " + "; ".join(parts) + "."


PROTOCOLS: dict[str, EvalProtocol] = {
    "soundguide": EvalProtocol(
        name="soundguide",
        description="the encoder's training setup: the first 10 s, padding at the end, "
        "cleaned labels in the four training templates",
        crop="start",
        pad="end",
        db_reference="window",
        labels="clean",
        templates=DEFAULT_TEMPLATES,
    ),
    "authors": EvalProtocol(
        name="authors",
        description="the original authors' posted zero-shot script: centred crop and centred "
        "zero padding, the whole clip's dB reference, raw dataset labels, the bare label",
        crop="center",
        pad="center",
        db_reference="clip",
        labels="raw",
        templates=("{label}",),
    ),
}
"""The evaluation protocols ``--protocol`` names; ``soundguide`` is the default."""

DEFAULT_PROTOCOL = "soundguide"


def get_protocol(name: str) -> EvalProtocol:
    """The protocol registered as ``name``, or a :class:`ConfigError` naming the available ones."""
    if name not in PROTOCOLS:
        from soundguide.core.registry import unknown_name_message

        raise ConfigError(unknown_name_message("evaluation protocol", name, PROTOCOLS))
    return PROTOCOLS[name]


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
    protocol: EvalProtocol = field(default_factory=lambda: PROTOCOLS[DEFAULT_PROTOCOL])
    """The settings used (the embedder's own crop, pad and dB reference where it reports them)."""
    text_weights: dict[str, Any] | None = None
    """The CLIP file of the prompts: name, file, sha256 and whether it is random or tiny
    (:func:`~soundguide.evaluation.embedders.describe_clip_file`)."""

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
    protocol: EvalProtocol | str = DEFAULT_PROTOCOL,
    templates: Sequence[str] | None = None,
    clean_labels: bool | None = None,
    text_model: str | None = None,
    text_weights: dict[str, Any] | None = None,
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
    and ``text_weights`` only describe it in the report.

    ``protocol`` (a name of :data:`PROTOCOLS` or an :class:`EvalProtocol`)
    gives the prompts (its labels and templates) unless ``templates`` or
    ``clean_labels`` are given; ``clean_labels=False`` puts the class names
    into the templates as the dataset spells them (``crackling_fire``), as the
    original authors' zero-shot script did. The embedder was built with the
    protocol's crop, pad and dB reference (see
    :func:`~soundguide.evaluation.embedders.embedder_from_guidance`); where it
    reports other values, the report records them as changed.
    """
    if isinstance(protocol, str):
        protocol = get_protocol(protocol)
    labels = None if clean_labels is None else ("clean" if clean_labels else "raw")
    info = describe_embedder(embedder)
    protocol = protocol.with_settings(
        templates=templates,
        labels=labels,
        **{k: info.get(k) for k in CANVAS_SETTINGS},
    )
    classifier = text_classifier(
        text_encoder, dataset.class_names, protocol.templates, clean=protocol.clean_labels
    )
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
        templates=protocol.templates,
        prompts=class_prompts(dataset.class_names, protocol.templates, clean=protocol.clean_labels),
        encoding=encoded,
        embedder=info,
        text_model=text_model,
        predicted=predicted,
        protocol=protocol,
        text_weights=text_weights,
    )
