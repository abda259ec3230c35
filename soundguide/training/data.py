"""Training examples from a curated store: crop, SpecAugment view, resize; global batches.

Every random choice for an example (the crop offset, the SpecAugment masks, the
text template) is drawn from a generator seeded by ``(seed, split, epoch,
item)``, not from a process's RNG. An example is therefore the same in any
DataLoader worker, on any rank, with any world size or number of accumulation
steps, and after a resume: what makes distributed runs equal single-process
ones and resumed runs equal uninterrupted ones.

:class:`GlobalBatchSampler` replaces ``DistributedSampler`` for the same
reason. It draws one permutation per epoch, cuts it into *global* batches, and
gives rank ``r`` the ``r``-th contiguous chunk of each global batch, split into
``micro_batches`` micro-batches. The clips of a global batch do not depend on
the world size, and a rank's chunk is exactly the micro-batch a single process
sees when it accumulates over ``world_size`` micro-batches (so batch-norm
statistics match too). ``DistributedSampler`` interleaves ranks and pads the
epoch with repeated items instead, and cannot start mid-epoch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from soundguide.core.errors import ConfigError
from soundguide.encoders.soundclip import crop_starts, fit_frames, spectrogram_to_input
from soundguide.training.store import CuratedStore

TRAIN_STREAM = 0
VAL_STREAM = 1


def example_seed(seed: int, stream: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one example, independent of process, rank and order."""
    state = np.random.SeedSequence([seed, stream, epoch, index]).generate_state(2)
    return (int(state[0]) << 31 | int(state[1])) & (2**63 - 1)


@dataclass(frozen=True)
class SpecAugment:
    """SpecAugment on a log-mel spectrogram: ``num_masks`` frequency and time masks.

    Uses ``torchaudio.transforms.FrequencyMasking`` / ``TimeMasking`` (mask value
    0, the -80 dB floor) under a forked, seeded torch RNG.

    Input: (C, 128, F). Output: (C, 128, F), a masked copy.
    """

    freq_mask: int = 24
    """Largest number of mel bands one frequency mask covers."""
    time_mask: int = 96
    """Largest number of frames one time mask covers (of 864)."""
    num_masks: int = 2

    def __post_init__(self) -> None:
        if self.freq_mask < 0 or self.time_mask < 0 or self.num_masks < 0:
            raise ConfigError(
                f"SpecAugment settings must be >= 0, got freq_mask={self.freq_mask}, "
                f"time_mask={self.time_mask}, num_masks={self.num_masks}"
            )

    def __call__(self, spec: torch.Tensor, seed: int) -> torch.Tensor:
        import torchaudio.transforms as T

        freq = T.FrequencyMasking(self.freq_mask) if self.freq_mask else None
        time = T.TimeMasking(self.time_mask) if self.time_mask else None
        out = spec.clone()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for _ in range(self.num_masks):
                if freq is not None:
                    out = freq(out)
                if time is not None:
                    out = time(out)
        return out


class ClipDataset(Dataset):
    """Examples of a :class:`CuratedStore`, indexed by ``(epoch, position)``.

    Args:
        store: the curated store.
        indices: store item of each position.
        label_ids: per store item, its index in the label set (-1: none).
        caption_ids: per store item, its index in the caption set (-1: none).
        num_templates: templates to choose from (one per example and epoch).
        augment: the SpecAugment of the second view.
        train: random crop and template (else the start of the clip and a
            fixed, seeded template per item).

    An example is a dict: ``audio`` and ``augmented`` (1, 128, 512) float32,
    ``label``, ``caption``, ``template`` int64, and when the store has video
    frames ``image`` (D,) and ``has_image``.
    """

    def __init__(
        self,
        store: CuratedStore,
        indices: Sequence[int],
        label_ids: Sequence[int],
        caption_ids: Sequence[int],
        *,
        num_templates: int,
        augment: SpecAugment,
        seed: int = 0,
        train: bool = True,
    ) -> None:
        self.store = store
        self.indices = list(indices)
        self.label_ids = list(label_ids)
        self.caption_ids = list(caption_ids)
        self.num_templates = int(num_templates)
        self.augment = augment
        self.seed = int(seed)
        self.train = train
        self.image_dim = store.image_dim if store.has_images else None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor | int]:
        epoch, position = key
        index = self.indices[position]
        stream = TRAIN_STREAM if self.train else VAL_STREAM
        seed = example_seed(self.seed, stream, epoch if self.train else 0, index)
        generator = torch.Generator().manual_seed(seed)
        spec = self.store.spectrogram(index)[None]  # (1, 128, F)
        starts = crop_starts(
            spec.shape[-1], 1, "random" if self.train else "start", generator=generator
        )
        cropped = fit_frames(spec, starts)  # (1, 128, 864)
        example: dict[str, torch.Tensor | int] = {
            "audio": spectrogram_to_input(cropped)[0],
            "augmented": spectrogram_to_input(self.augment(cropped, seed ^ 0x5EED))[0],
            "label": self.label_ids[index],
            "caption": self.caption_ids[index],
            "template": int(torch.randint(self.num_templates, (1,), generator=generator)),
        }
        if self.image_dim is not None:
            embedding = self.store.image_embedding(index)
            example["has_image"] = embedding is not None
            example["image"] = embedding if embedding is not None else torch.zeros(self.image_dim)
        return example


class GlobalBatchSampler(Sampler[list[tuple[int, int]]]):
    """This rank's micro-batches of every global batch of an epoch, from a given step on.

    Args:
        num_items: dataset size.
        batch_size: the *global* batch (all ranks, all micro-batches together).
        rank, world_size: this process in the job.
        micro_batches: accumulation steps per optimizer step.
        seed: seeds the per-epoch permutation (``shuffle``).

    The last incomplete global batch of an epoch is dropped (contrastive losses
    want full batches). Yields lists of ``(epoch, position)`` keys for
    :class:`ClipDataset`: ``micro_batches`` lists per step.
    """

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        micro_batches: int = 1,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        if batch_size % (world_size * micro_batches):
            raise ConfigError(
                f"batch size {batch_size} must be a multiple of world size x accumulation steps "
                f"= {world_size} x {micro_batches}"
            )
        self.num_items = num_items
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.micro_batches = micro_batches
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.start_step = 0

    @property
    def steps_per_epoch(self) -> int:
        return self.num_items // self.batch_size

    @property
    def micro_batch_size(self) -> int:
        return self.batch_size // (self.world_size * self.micro_batches)

    def set_position(self, epoch: int, step: int = 0) -> None:
        """Start the next iteration at ``step`` of ``epoch``."""
        self.epoch, self.start_step = int(epoch), int(step)

    def permutation(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.num_items)
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_items)

    def global_batch(self, epoch: int, step: int) -> list[int]:
        """Dataset positions of global batch ``step`` of ``epoch`` (all ranks)."""
        order = self.permutation(epoch)
        return [int(i) for i in order[step * self.batch_size : (step + 1) * self.batch_size]]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = self.permutation(self.epoch)
        local = self.batch_size // self.world_size
        micro = self.micro_batch_size
        for step in range(self.start_step, self.steps_per_epoch):
            batch = order[step * self.batch_size : (step + 1) * self.batch_size]
            chunk = batch[self.rank * local : (self.rank + 1) * local]
            for m in range(self.micro_batches):
                yield [(self.epoch, int(i)) for i in chunk[m * micro : (m + 1) * micro]]

    def __len__(self) -> int:
        return max(0, self.steps_per_epoch - self.start_step) * self.micro_batches


class ShardSampler(Sampler[list[tuple[int, int]]]):
    """Validation: rank ``r`` takes the ``r``-th contiguous shard of the items, in batches.

    Shards have ``ceil(n / world_size)`` items (the last ones fewer, possibly none).
    """

    def __init__(self, num_items: int, batch_size: int, *, rank: int = 0, world_size: int = 1):
        per_rank = -(-num_items // world_size)
        self.positions = list(range(rank * per_rank, min(num_items, (rank + 1) * per_rank)))
        self.batch_size = batch_size
        self.shard_size = per_rank

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for i in range(0, len(self.positions), self.batch_size):
            yield [(0, p) for p in self.positions[i : i + self.batch_size]]

    def __len__(self) -> int:
        return -(-len(self.positions) // self.batch_size)
