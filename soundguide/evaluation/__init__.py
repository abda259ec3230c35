"""Audio classification benchmarks for audio encoders: ESC-50 and UrbanSound8K.

Two protocols, both on the official cross-validation folds:

- **zero-shot** (:func:`zero_shot`): each clip gets the class whose CLIP text
  embedding (mean over prompt templates) is closest to its audio embedding;
- **linear probe** (:func:`linear_probe`, :func:`probe_dataset`): logistic
  regression on frozen, L2-normalized embeddings, leave-one-fold-out, with
  ``C`` chosen by cross-validation over the training folds only.

Any audio encoder plugs in as an :class:`AudioEmbedder` (``sample_rate``,
``identity``, ``embed_audio_batch(waves) -> (N, D)``); :class:`SoundCLIPEmbedder`
is the built-in one. Embeddings are cached per (dataset, encoder checksum,
crop policy). Command line: ``soundguide zeroshot`` and ``soundguide probe``.

Example::

    from soundguide.encoders.clip import CLIPEncoder
    from soundguide.evaluation import SoundCLIPEmbedder, load_esc50, zero_shot

    dataset = load_esc50("ESC-50-master")
    embedder = SoundCLIPEmbedder.from_checkpoint("resnet18_57.pth", crop="start")
    result = zero_shot(dataset, embedder, CLIPEncoder.load("ViT-B/32"))
    print(result.top1)
"""

from __future__ import annotations

from soundguide.evaluation.datasets import (
    AudioDataset,
    Clip,
    clean_label,
    load_dataset,
    load_esc50,
    load_urbansound8k,
)
from soundguide.evaluation.embedders import (
    EVAL_CROPS,
    AudioEmbedder,
    SoundCLIPEmbedder,
    embedder_from_guidance,
)
from soundguide.evaluation.encoding import DatasetEmbeddings, default_cache_dir, embed_dataset
from soundguide.evaluation.metrics import classification_metrics, confusion_matrix, topk_hits
from soundguide.evaluation.probe import (
    DEFAULT_CS,
    ProbeReport,
    ProbeResult,
    linear_probe,
    probe_dataset,
    select_C,
)
from soundguide.evaluation.reports import write_probe_report, write_zeroshot_report
from soundguide.evaluation.zeroshot import (
    DEFAULT_TEMPLATES,
    ZeroShotResult,
    class_prompts,
    text_classifier,
    zero_shot,
    zero_shot_scores,
)

__all__ = [
    "DEFAULT_CS",
    "DEFAULT_TEMPLATES",
    "EVAL_CROPS",
    "AudioDataset",
    "AudioEmbedder",
    "Clip",
    "DatasetEmbeddings",
    "ProbeReport",
    "ProbeResult",
    "SoundCLIPEmbedder",
    "ZeroShotResult",
    "class_prompts",
    "classification_metrics",
    "clean_label",
    "confusion_matrix",
    "default_cache_dir",
    "embed_dataset",
    "embedder_from_guidance",
    "linear_probe",
    "load_dataset",
    "load_esc50",
    "load_urbansound8k",
    "probe_dataset",
    "select_C",
    "text_classifier",
    "topk_hits",
    "write_probe_report",
    "write_zeroshot_report",
    "zero_shot",
    "zero_shot_scores",
]
