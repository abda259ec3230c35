"""Training the SoundCLIP audio encoder into CLIP's embedding space (section 1 of the paper).

Two steps, each a CLI command and a function:

1. :func:`curate` (``soundguide curate DATASET STORE``): read a dataset
   (:mod:`~soundguide.training.datasets`: VGGSound CSV, class folders, CSV/JSONL
   manifest), precompute the mel front end into a sharded store
   (:mod:`~soundguide.training.store`), in parallel and resumably, listing every
   file it skips.
2. :func:`train` (``soundguide train STORE OUT``): contrastive training against
   frozen CLIP text embeddings, a SpecAugment view and optional video frames,
   on one process or many (``torchrun``, DDP), with exact resume; the best and
   last encoders are exported as plain state dicts that
   :func:`~soundguide.encoders.soundclip.load_soundclip` reads.

The commands are registered by the plugin module :mod:`soundguide.training.plugin`.
Names are imported from their modules on first use, so that importing that
plugin module (what ``soundguide --help`` does) loads none of them.
"""

from __future__ import annotations

from soundguide.lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "PAPER_SETTINGS": "config",
    "TrainConfig": "config",
    "CurationReport": "curation",
    "curate": "curation",
    "DatasetListing": "datasets",
    "Item": "datasets",
    "read_dataset": "datasets",
    "ContrastiveLoss": "loss",
    "info_nce": "loss",
    "TinyAudioEncoder": "models",
    "build_encoder": "models",
    "export_encoder": "models",
    "CuratedStore": "store",
    "TrainingError": "trainer",
    "TrainResult": "trainer",
    "train": "trainer",
}


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = sorted(_EXPORTS)
