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
"""

from __future__ import annotations

from soundguide.training.config import PAPER_SETTINGS, TrainConfig
from soundguide.training.curation import CurationReport, curate
from soundguide.training.datasets import DatasetListing, Item, read_dataset
from soundguide.training.loss import ContrastiveLoss, info_nce
from soundguide.training.models import TinyAudioEncoder, build_encoder, export_encoder
from soundguide.training.store import CuratedStore
from soundguide.training.trainer import TrainingError, TrainResult, train

__all__ = [
    "PAPER_SETTINGS",
    "ContrastiveLoss",
    "CuratedStore",
    "CurationReport",
    "DatasetListing",
    "Item",
    "TinyAudioEncoder",
    "TrainConfig",
    "TrainResult",
    "TrainingError",
    "build_encoder",
    "curate",
    "export_encoder",
    "info_nce",
    "read_dataset",
    "train",
]
