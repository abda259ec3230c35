"""Audio classification benchmarks for audio encoders: ESC-50 and UrbanSound8K.

Two protocols, both on the official cross-validation folds:

- **zero-shot** (:func:`zero_shot`): each clip gets the class whose CLIP text
  embedding (mean over prompt templates) is closest to its audio embedding;
- **linear probe** (:func:`linear_probe`, :func:`probe_dataset`): logistic
  regression on frozen, L2-normalized embeddings, leave-one-fold-out, with
  ``C`` chosen by cross-validation over the training folds only.

Any audio encoder plugs in as an :class:`~soundguide.core.interfaces.AudioEmbedder`
(``sample_rate``, ``identity``, ``embed_audio_batch(waves) -> (N, D)``); a
guidance plugin offers one with ``audio_embedder(...)`` (declared in
:mod:`soundguide.core.interfaces`); :class:`SoundCLIPEmbedder` is the built-in
``audio`` guidance's. Embeddings are cached per (dataset, encoder checksum,
crop, pad and dB reference). Prompt templates and label cleaning are shared
with training (:mod:`~soundguide.evaluation.prompts`). An evaluation protocol
(:data:`PROTOCOLS`: ``soundguide``, the default, or ``authors``, the original
authors' zero-shot script) names every setting besides the weights. Command
line: ``soundguide zeroshot`` and ``soundguide probe`` (registered by the
plugin module :mod:`soundguide.evaluation.plugin`).

Names are imported from their modules on first use, so that importing
``soundguide.evaluation.plugin`` (what ``soundguide --help`` does) loads none of them.

Example::

    from soundguide.encoders.clip import CLIPEncoder
    from soundguide.evaluation import PROTOCOLS, SoundCLIPEmbedder, load_esc50, zero_shot

    dataset = load_esc50("ESC-50-master")
    embedder = SoundCLIPEmbedder.from_checkpoint("resnet18_57.pth", crop="start")
    result = zero_shot(dataset, embedder, CLIPEncoder.load("ViT-B/32"))
    print(result.top1)

    # the original authors' protocol: its canvas settings go to the embedder
    authors = PROTOCOLS["authors"]
    embedder = SoundCLIPEmbedder.from_checkpoint(
        "resnet18_57.pth", crop=authors.crop, pad=authors.pad, db_reference=authors.db_reference
    )
    result = zero_shot(dataset, embedder, CLIPEncoder.load("ViT-B/32"), protocol=authors)
"""

from __future__ import annotations

from soundguide.lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "AudioDataset": "datasets",
    "Clip": "datasets",
    "DatasetWarning": "datasets",
    "OFFICIAL_SIZES": "datasets",
    "load_dataset": "datasets",
    "load_esc50": "datasets",
    "load_urbansound8k": "datasets",
    "EVAL_CROPS": "embedders",
    "EVAL_DB_REFERENCES": "embedders",
    "EVAL_PADS": "embedders",
    "AudioEmbedder": "embedders",
    "SoundCLIPEmbedder": "embedders",
    "clip_weights_check": "embedders",
    "describe_clip_file": "embedders",
    "embedder_from_guidance": "embedders",
    "soundclip_weights_check": "embedders",
    "DatasetEmbeddings": "encoding",
    "default_cache_dir": "encoding",
    "embed_dataset": "encoding",
    "classification_metrics": "metrics",
    "confusion_matrix": "metrics",
    "topk_hits": "metrics",
    "DEFAULT_CS": "probe",
    "ProbeReport": "probe",
    "ProbeResult": "probe",
    "linear_probe": "probe",
    "probe_dataset": "probe",
    "select_C": "probe",
    "DEFAULT_TEMPLATES": "prompts",
    "class_prompts": "prompts",
    "clean_label": "prompts",
    "paper_comparison": "reports",
    "write_probe_report": "reports",
    "write_zeroshot_report": "reports",
    "PROTOCOLS": "zeroshot",
    "EvalProtocol": "zeroshot",
    "ZeroShotResult": "zeroshot",
    "get_protocol": "zeroshot",
    "text_classifier": "zeroshot",
    "zero_shot": "zeroshot",
    "zero_shot_scores": "zeroshot",
}


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = sorted(_EXPORTS)
