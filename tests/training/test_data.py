from __future__ import annotations

import numpy as np
import pytest
import torch

from soundguide.core.errors import ConfigError
from soundguide.encoders.soundclip import NUM_FRAMES, fit_frames, spectrogram_to_input
from soundguide.training.data import ClipDataset, GlobalBatchSampler, ShardSampler, SpecAugment
from soundguide.training.store import CuratedStore


class TestSpecAugment:
    def test_masks_whole_bands_and_frames_with_zero(self):
        spec = torch.rand(1, 128, NUM_FRAMES) + 0.1
        out = SpecAugment(freq_mask=20, time_mask=80, num_masks=2)(spec, seed=3)
        zero = out == 0
        bands = zero.all(dim=-1)[0]
        frames = zero.all(dim=-2)[0]
        assert bands.any() and frames.any()
        # every zero lies in a masked band or frame; the rest is untouched
        assert torch.equal(zero[0], bands[:, None] | frames[None, :])
        assert torch.equal(out[~zero], spec[~zero])

    def test_seeded_and_leaves_global_rng_alone(self):
        spec = torch.rand(1, 128, 200) + 0.1
        augment = SpecAugment()
        state = torch.get_rng_state()
        a, b = augment(spec, 11), augment(spec, 11)
        assert torch.equal(a, b) and not torch.equal(a, augment(spec, 12))
        assert torch.equal(torch.get_rng_state(), state)

    def test_off_and_bad_settings(self):
        spec = torch.rand(1, 128, 50)
        assert torch.equal(SpecAugment(0, 0, 2)(spec, 0), spec)
        with pytest.raises(ConfigError, match="SpecAugment settings must be >= 0"):
            SpecAugment(freq_mask=-1)


class TestClipDataset:
    def dataset(self, store, train=True, seed=0):
        s = CuratedStore(store)
        labels = s.labels
        return ClipDataset(
            s,
            list(range(len(s))),
            [labels.index(it.label) for it in s.items],
            [-1] * len(s),
            num_templates=4,
            augment=SpecAugment(),
            seed=seed,
            train=train,
        )

    def test_example(self, store):
        data = self.dataset(store, train=False)
        example = data[(0, 5)]
        assert example["audio"].shape == example["augmented"].shape == (1, 128, 512)
        assert example["label"] == data.label_ids[5] and example["caption"] == -1
        assert 0 <= example["template"] < 4
        # the clean view is the front end's steps 4-5 of the stored spectrogram
        expected = spectrogram_to_input(fit_frames(data.store.spectrogram(5)[None]))[0]
        assert torch.equal(example["audio"], expected)
        assert not torch.equal(example["augmented"], example["audio"])

    @pytest.mark.parametrize("train", [False, True], ids=["validation", "training"])
    def test_one_resize_not_the_released_loaders_two(self, store, train):
        """The input is one ``cv2.resize`` of the crop and a reshape, as the encoder was used.

        The released loader's first dataset class resized twice, the second time row 0
        of the first result: every one of its 512 rows is then the lowest mel band's
        time course, the rest of the spectrogram gone. Checked with OpenCV itself.
        """
        cv2 = pytest.importorskip("cv2")
        data = self.dataset(store, train=train)
        example = data[(1, 5)]
        # the crop the dataset drew: the stored clip (1 s) padded at some offset to 864 frames
        stored = data.store.spectrogram(5).numpy()
        canvas = torch.zeros(128, NUM_FRAMES)
        audio = example["audio"][0].numpy()
        for start in range(NUM_FRAMES - stored.shape[1] + 1):
            canvas.zero_()
            canvas[:, start : start + stored.shape[1]] = torch.from_numpy(stored)
            once = cv2.resize(canvas.numpy(), (128, 512)).reshape(128, 512)
            if np.allclose(audio, once, atol=1e-6):
                break
        else:
            pytest.fail("the training input is not one cv2.resize of a crop of the clip")
        first = cv2.resize(canvas.numpy(), (128, 512))
        twice = cv2.resize(first[0], (128, 512))
        assert np.allclose(twice, np.tile(first[0], (512, 1)), atol=1e-6)
        assert np.abs(audio - twice.reshape(128, 512)).max() > 0.1
        rows = audio.reshape(512, 128)
        assert np.abs(rows - rows[0]).max() > 0.1  # not one row repeated

    def test_same_key_same_example_anywhere(self, store):
        data = self.dataset(store)
        first = data[(2, 7)]
        for _ in range(2):  # order, RNG state and pickling do not matter
            torch.rand(5)
            other = self.dataset(store)[(2, 7)]
            assert all(
                torch.equal(torch.as_tensor(first[k]), torch.as_tensor(other[k])) for k in first
            )
        changed = [data[(3, 7)], self.dataset(store, seed=1)[(2, 7)]]
        for example in changed:
            assert not torch.equal(example["augmented"], first["augmented"])


class TestGlobalBatchSampler:
    @pytest.mark.parametrize("world, micro", [(1, 1), (1, 4), (2, 2), (4, 1)])
    def test_global_batches_do_not_depend_on_world_size(self, world, micro):
        reference = GlobalBatchSampler(50, 8, seed=5)
        reference.set_position(3)
        expected = list(reference)
        samplers = [
            GlobalBatchSampler(50, 8, rank=r, world_size=world, micro_batches=micro, seed=5)
            for r in range(world)
        ]
        per_rank = []
        for sampler in samplers:
            sampler.set_position(3)
            per_rank.append(list(sampler))
        assert reference.steps_per_epoch == 6
        for step in range(6):
            # rank-major, then micro-batch: the order in which embeddings are gathered
            gathered = [
                key
                for r in range(world)
                for batch in per_rank[r][step * micro : (step + 1) * micro]
                for key in batch
            ]
            assert gathered == expected[step]
            assert {k for _, k in gathered} == set(reference.global_batch(3, step))
        assert all(len(b) == 8 // (world * micro) for r in per_rank for b in r)

    def test_epochs_differ_and_resume_mid_epoch(self):
        sampler = GlobalBatchSampler(40, 8, micro_batches=2, seed=0)
        sampler.set_position(1)
        whole = list(sampler)
        sampler.set_position(1, step=3)
        assert len(sampler) == 4 and list(sampler) == whole[6:]
        assert sampler.global_batch(0, 0) != sampler.global_batch(1, 0)
        assert sorted(i for s in range(5) for i in sampler.global_batch(2, s)) == list(range(40))

    def test_batch_must_split_evenly(self):
        with pytest.raises(
            ConfigError,
            match="batch size 10 must be a multiple of world size x accumulation steps = 2 x 2",
        ):
            GlobalBatchSampler(40, 10, world_size=2, micro_batches=2)


def test_shard_sampler_covers_each_item_once():
    shards = [list(ShardSampler(7, 2, rank=r, world_size=3)) for r in range(3)]
    assert [[k for b in s for _, k in b] for s in shards] == [[0, 1, 2], [3, 4, 5], [6]]
    assert [len(ShardSampler(7, 2, rank=r, world_size=3)) for r in range(3)] == [2, 2, 1]
