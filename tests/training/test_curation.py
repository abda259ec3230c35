from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner
from PIL import Image

from soundguide.core.errors import DatasetError, OutputError
from soundguide.encoders.audio import load_audio
from soundguide.encoders.soundclip import SoundCLIPFrontend
from soundguide.training.cli import curate as curate_command
from soundguide.training.curation import ClipKeys, curate, max_clips_per_shard, plan_shards
from soundguide.training.store import INDEX_NAME, CuratedStore, read_skipped
from tests.training.helpers import CLASSES, SR, clip, write_bad_files, write_class_folders


def shard_files(store_dir):
    """Every file of the store's shards, with what changes when it is written again."""
    return {
        p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (store_dir / "shards").iterdir()
    }


def changed_files(before, after):
    return {name for name in before.keys() | after.keys() if before.get(name) != after.get(name)}


def dataset_keys(root):
    keys = ClipKeys(root)
    return sorted(keys(path)[0] for path in root.rglob("*.wav"))


def hash_bits(key):
    """sha256 of a clip key as a string of 256 bits, independently of the planner."""
    return format(int.from_bytes(hashlib.sha256(key.encode()).digest(), "big"), "0256b")


class TestStore:
    def test_index_and_arrays(self, store, dataset):
        s = CuratedStore(store)
        assert len(s) == 32 and s.labels == sorted(CLASSES)
        assert s.index["frontend"]["dtype"] == "float16"
        # shards of at most round(2 ln 2 * 10) = 14 clips, named by their hash prefix
        names = [shard["name"] for shard in s.index["shards"]]
        assert sorted(p.name for p in (store / "shards").glob("*.npy")) == sorted(
            f"{name}.npy" for name in names
        )
        assert sum(shard["items"] for shard in s.index["shards"]) == 32
        assert all(0 < shard["items"] <= 14 for shard in s.index["shards"])
        root = s.index["dataset"]["resolved_root"]
        for item in s.items:
            key = os.path.relpath(os.path.realpath(item.source), root)
            assert hash_bits(key).startswith(names[item.shard][1:])
        # items keep the dataset's order, whatever their shards
        first = s.items[0]
        assert first.label == "chirp" and first.source.endswith("chirp/chirp_0.wav")
        assert len(first.sha256) == 64 and first.split is None

    def test_spectrogram_is_the_front_end_in_float16(self, store):
        s = CuratedStore(store)
        item = s.items[13]
        expected = SoundCLIPFrontend().spectrogram(load_audio(item.source))[0]
        got = s.spectrogram(13)
        assert got.shape == expected.shape == (128, 1 + SR // 512) and got.dtype == torch.float32
        # float16 in [0, 1]: rounding error at most 2**-12
        assert (got - expected).abs().max() <= 2**-12
        assert not torch.equal(got, s.spectrogram(14))

    def test_not_a_store(self, tmp_path):
        with pytest.raises(
            DatasetError, match=f"^{tmp_path} is not a curated store: it has no index.json$"
        ):
            CuratedStore(tmp_path)
        with pytest.raises(DatasetError, match="curated store not found"):
            CuratedStore(tmp_path / "nope")


class TestSharding:
    KEYS = [f"class_{i % 7}/clip_{i}.wav" for i in range(3000)]

    def test_each_shard_is_a_hash_prefix_split_only_while_too_big(self):
        keys = self.KEYS[:300]
        plan = plan_shards(reversed(keys), 20)
        assert plan == plan_shards(keys + keys[:5], 20)  # order and duplicates do not matter
        assert sorted(k for group in plan.values() for k in group) == sorted(keys)
        bits = {key: hash_bits(key) for key in keys}
        for name, group in plan.items():
            prefix = name[1:]
            assert name[0] == "h" and 0 < len(group) <= 20 and group == sorted(group)
            assert {key for key in keys if bits[key].startswith(prefix)} == set(group)
            # its parent held more than 20 keys, else it would be the shard
            assert sum(bits[key].startswith(prefix[:-1]) for key in keys) > 20
        assert plan_shards(keys[:20], 20) == {"h": sorted(keys[:20])}

    def test_adding_or_removing_a_key_changes_only_its_shard(self):
        base = self.KEYS[:300]
        old = plan_shards(base, 20)
        splits = merges = 0
        for key in self.KEYS[300:500]:
            new = plan_shards(base + [key], 20)
            gone = {name: old[name] for name in old if new.get(name) != old[name]}
            came = {name: new[name] for name in new if old.get(name) != new[name]}
            assert len(gone) == 1, "only the shard the key falls in changes"
            [(name, group)] = gone.items()
            assert hash_bits(key).startswith(name[1:])
            assert sorted(k for g in came.values() for k in g) == sorted(group + [key])
            splits += len(came) > 1
        for key in base[:200]:
            new = plan_shards([k for k in base if k != key], 20)
            gone = {name: old[name] for name in old if new.get(name) != old[name]}
            came = {name: new[name] for name in new if old.get(name) != new[name]}
            [(name, group)] = came.items()
            assert hash_bits(key).startswith(name[1:])
            # the key's own shard, or that shard merged with its sibling
            assert len(gone) in (1, 2)
            assert sorted(k for g in gone.values() for k in g) == sorted(group + [key])
            merges += len(gone) == 2
        assert splits and merges  # both cases were met

    def test_shards_average_the_shard_size_and_never_exceed_the_cap(self):
        cap = max_clips_per_shard(16)
        assert cap == 22
        means = []
        for count in np.geomspace(100, 3000, 25).astype(int):
            sizes = [len(group) for group in plan_shards(self.KEYS[:count], cap).values()]
            assert max(sizes) <= cap
            means.append(np.mean(sizes))
        assert 0.6 * 16 < min(means) and max(means) < 1.4 * 16
        assert np.mean(means) == pytest.approx(16, rel=0.1)

    def test_keys_do_not_depend_on_how_the_root_is_given(self, tmp_path, monkeypatch):
        (tmp_path / "ds" / "a").mkdir(parents=True)
        (tmp_path / "blobs").mkdir()
        (tmp_path / "ds" / "a" / "x.wav").write_bytes(b"x")
        (tmp_path / "blobs" / "y.wav").write_bytes(b"y")
        (tmp_path / "ds" / "a" / "y.wav").symlink_to(tmp_path / "blobs" / "y.wav")
        (tmp_path / "link").symlink_to(tmp_path / "ds")
        monkeypatch.chdir(tmp_path)
        real = os.path.realpath(tmp_path)
        for root in ("ds", tmp_path / "ds", "link", "./link/../ds"):
            keys = ClipKeys(root)
            assert keys(f"{root}/a/x.wav") == ("a/x.wav", f"{real}/ds/a/x.wav")
            assert keys(f"{root}/a/y.wav") == ("../blobs/y.wav", f"{real}/blobs/y.wav")


class TestBadFiles:
    def test_corrupt_silent_and_empty_files_are_skipped_and_listed(self, tmp_path):
        root = write_class_folders(tmp_path / "ds", per_class=2, seconds=0.3)
        bad = write_bad_files(root / "tone")
        report = curate(root, tmp_path / "store", progress=False)
        assert (report.items, report.skipped) == (8, 3)
        rows = dict(read_skipped(tmp_path / "store" / "skipped.tsv"))
        assert "the file is empty (0 bytes)" in rows[str(bad["empty"])]
        assert "audio is silent" in rows[str(bad["silent"])]
        assert "not an audio file" in rows[str(bad["corrupt"])]
        sources = {item.source for item in CuratedStore(tmp_path / "store").items}
        assert not sources & {str(p) for p in bad.values()}
        assert "skipped 3" in report.summary()

    def test_no_usable_item_names_the_folder(self, tmp_path):
        root = tmp_path / "ds"
        write_bad_files(root / "rain")
        with pytest.raises(DatasetError, match=f"^no usable audio in {root}: 3 files skipped"):
            curate(root, tmp_path / "store", progress=False)
        assert len(read_skipped(tmp_path / "store" / "skipped.tsv")) == 3

    def test_labels_clip_cannot_read_are_skipped_and_listed(self, tmp_path):
        for name in ("a", "b", "c"):
            sf.write(tmp_path / f"{name}.wav", clip("tone", 0, 0.2), SR)
        long_caption = " ".join(["supercalifragilistic"] * 30)
        (tmp_path / "m.csv").write_text(
            f"path,caption,label\na.wav,,\nb.wav,{long_caption},\nc.wav,a tone,\n"
        )
        report = curate(tmp_path / "m.csv", tmp_path / "store", progress=False)
        assert report.items == 1
        rows = dict(read_skipped(tmp_path / "store" / "skipped.tsv"))
        assert rows[str(tmp_path / "a.wav")] == "empty label and caption"
        assert "tokens long; CLIP takes at most 77" in rows[str(tmp_path / "b.wav")]

    def test_output_folder_that_is_not_a_store(self, dataset, tmp_path):
        (tmp_path / "notes.txt").write_text("mine")
        with pytest.raises(OutputError, match="not empty and holds no curated store"):
            curate(dataset, tmp_path, progress=False)


class TestResume:
    def test_rerun_keeps_finished_shards(self, store, tmp_path):
        copy = tmp_path / "store"
        shutil.copytree(store, copy)
        dataset_root = CuratedStore(copy).index["dataset"]["root"]
        before = shard_files(copy)
        report = curate(dataset_root, copy, shard_size=10, progress=False)
        assert report.shards == len(CuratedStore(store).shard_names) == 3
        assert (report.shards_reused, report.computed) == (3, 0)
        assert shard_files(copy) == before

    def test_same_folder_relative_absolute_or_through_a_symlink_recomputes_nothing(
        self, tmp_path, monkeypatch
    ):
        root = write_class_folders(tmp_path / "ds", per_class=3, seconds=0.3)
        (tmp_path / "link").symlink_to(root)
        monkeypatch.chdir(tmp_path)
        first = curate("ds", "store", shard_size=4, progress=False)
        assert first.computed == 12 and first.shards > 1
        before, items = shard_files(tmp_path / "store"), CuratedStore("store").items
        for source in (root, "link", tmp_path / "link", "./link/../ds"):
            report = curate(source, tmp_path / "store", shard_size=4, progress=False)
            assert (report.shards_reused, report.computed) == (first.shards, 0), source
            assert shard_files(tmp_path / "store") == before
            # the same store; only the sources read as given
            again = CuratedStore(tmp_path / "store").items
            assert [(it.shard, it.offset, it.sha256) for it in again] == [
                (it.shard, it.offset, it.sha256) for it in items
            ]
            assert again[0].source == str(Path(source) / "chirp" / "chirp_0.wav")
        # the whole folder moved (its files keep their modification times)
        (tmp_path / "ds").rename(tmp_path / "moved")
        report = curate("moved", "store", shard_size=4, progress=False)
        assert (report.shards_reused, report.computed) == (first.shards, 0)

    @pytest.mark.parametrize("split", [False, True], ids=["fits", "splits"])
    def test_adding_one_file_recomputes_only_the_shard_it_falls_in(self, tmp_path, split):
        root = write_class_folders(tmp_path / "ds", per_class=4, seconds=0.3)
        out, cap = tmp_path / "store", max_clips_per_shard(3)
        first = curate(root, out, shard_size=3, progress=False)
        keys = dataset_keys(root)
        old = plan_shards(keys, cap)
        # a new file whose shard has room (or is full, and splits in two)
        for i in range(100):
            key = f"tone/new_{i}.wav"
            [name] = [n for n in old if hash_bits(key).startswith(n[1:])]
            if (len(old[name]) == cap) == split:
                break
        else:
            pytest.fail("no candidate file name lands in a shard of the wanted size")
        before = shard_files(out)
        sf.write(root / key, clip("tone", 999, 0.3), SR)
        report = curate(root, out, shard_size=3, progress=False)
        new = CuratedStore(out)
        came = {n for n in new.shard_names if n not in old or (n == name and not split)}
        assert len(came) == (2 if split else 1)
        assert changed_files(before, shard_files(out)) == {
            f"{n}.{ext}" for n in came | {name} for ext in ("npy", "json")
        }
        assert report.shards_reused == first.shards - 1
        assert report.computed == len(old[name]) + 1  # its shard's clips and the new one
        assert sum(it.source == str(root / key) for it in new.items) == 1

    def test_removing_one_file_recomputes_only_its_shard(self, tmp_path):
        root = write_class_folders(tmp_path / "ds", per_class=4, seconds=0.3)
        out = tmp_path / "store"
        first = curate(root, out, shard_size=3, progress=False)
        old = plan_shards(dataset_keys(root), max_clips_per_shard(3))
        # a file whose shard keeps other clips and does not merge with its sibling
        for key in dataset_keys(root):
            new = plan_shards([k for k in dataset_keys(root) if k != key], max_clips_per_shard(3))
            if set(new) == set(old):
                break
        else:
            pytest.fail("every file's removal merges its shard")
        [name] = [n for n in old if key in old[n]]
        before = shard_files(out)
        (root / key).unlink()
        report = curate(root, out, shard_size=3, progress=False)
        assert changed_files(before, shard_files(out)) == {f"{name}.npy", f"{name}.json"}
        assert (report.shards_reused, report.computed) == (first.shards - 1, len(old[name]) - 1)
        assert str(root / key) not in {it.source for it in CuratedStore(out).items}

    @pytest.mark.parametrize("change", ["content", "mtime"])
    def test_changed_file_recomputes_only_its_shard(self, tmp_path, change):
        root = write_class_folders(tmp_path / "ds", per_class=3, seconds=0.3)
        out = tmp_path / "store"
        first = curate(root, out, shard_size=4, progress=False)
        [item] = [it for it in CuratedStore(out).items if it.source.endswith("tone_0.wav")]
        name = CuratedStore(out).shard_names[item.shard]
        before = shard_files(out)
        target = root / "tone" / "tone_0.wav"
        if change == "content":
            sf.write(target, clip("chirp", 7, 0.3), SR)
        else:
            stat = target.stat()
            os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
        report = curate(root, out, shard_size=4, progress=False)
        assert report.shards_reused == first.shards - 1
        assert changed_files(before, shard_files(out)) == {f"{name}.npy", f"{name}.json"}
        [again] = [it for it in CuratedStore(out).items if it.source == str(target)]
        assert (again.sha256 != item.sha256) == (change == "content")

    def test_store_written_before_this_layout_loads_and_is_computed_again(self, tmp_path):
        root = write_class_folders(tmp_path / "ds", per_class=2, seconds=0.3)
        out = tmp_path / "store"
        curate(root, out, shard_size=100, progress=False)
        # the same store as the layout before wrote it: shards 00000..., listing paths
        shards, index = out / "shards", json.loads((out / INDEX_NAME).read_text())
        meta = json.loads((shards / "h.json").read_text())
        meta["sources"] = [[str(root / key), size, mtime] for key, size, mtime in meta.pop("clips")]
        (shards / "00000.json").write_text(json.dumps(meta))
        (shards / "h.npy").rename(shards / "00000.npy")
        (shards / "h.json").unlink()
        index["shards"][0]["name"] = "00000"
        del index["dataset"]["resolved_root"]
        (out / INDEX_NAME).write_text(json.dumps(index))
        old = CuratedStore(out)
        assert old.spectrogram(3).shape == (128, 1 + int(0.3 * SR) // 512)
        report = curate(root, out, shard_size=100, progress=False)
        assert (report.shards_reused, report.computed) == (0, 8)
        assert sorted(p.name for p in shards.iterdir()) == ["h.json", "h.npy"]
        assert torch.equal(CuratedStore(out).spectrogram(3), old.spectrogram(3))

    def test_interrupted_run_leaves_no_corrupt_shard_and_resumes(self, tmp_path, monkeypatch):
        root = write_class_folders(tmp_path / "ds", per_class=3, seconds=0.3)
        reference = curate(root, tmp_path / "reference", shard_size=4, progress=False)
        [first, *_] = CuratedStore(tmp_path / "reference").index["shards"]
        import soundguide.encoders.audio as audio

        real, calls = audio.load_audio, []

        def interrupted(*args, **kwargs):
            calls.append(args[0])
            if len(calls) == first["items"] + 1:  # the first clip of the second shard
                raise KeyboardInterrupt
            return real(*args, **kwargs)

        monkeypatch.setattr(audio, "load_audio", interrupted)
        out = tmp_path / "store"
        with pytest.raises(KeyboardInterrupt):
            curate(root, out, shard_size=4, progress=False)
        assert sorted(p.name for p in (out / "shards").iterdir()) == [
            f"{first['name']}.json",
            f"{first['name']}.npy",
        ]
        assert not (out / INDEX_NAME).exists()
        monkeypatch.setattr(audio, "load_audio", real)
        report = curate(root, out, shard_size=4, progress=False)
        assert (report.shards_reused, report.items) == (1, reference.items)
        fresh, resumed = CuratedStore(tmp_path / "reference"), CuratedStore(out)
        assert fresh.items == resumed.items
        for i in range(len(fresh)):
            assert torch.equal(fresh.spectrogram(i), resumed.spectrogram(i))

    def test_interrupted_resume_leaves_no_index_of_other_shards(self, tmp_path, monkeypatch):
        root = write_class_folders(tmp_path / "ds", per_class=3, seconds=0.3)
        out = tmp_path / "store"
        curate(root, out, shard_size=4, progress=False)
        sf.write(root / "tone" / "tone_0.wav", clip("chirp", 7, 0.3), SR)
        import soundguide.encoders.audio as audio

        def interrupted(*args, **kwargs):
            raise KeyboardInterrupt

        monkeypatch.setattr(audio, "load_audio", interrupted)
        with pytest.raises(KeyboardInterrupt):
            curate(root, out, shard_size=4, progress=False)
        # the old index pointed into the shard being rewritten: it is gone, not stale
        assert not (out / INDEX_NAME).exists()
        with pytest.raises(DatasetError, match="it has no index.json"):
            CuratedStore(out)

    def test_two_workers_write_the_same_store(self, store, tmp_path):
        dataset_root = CuratedStore(store).index["dataset"]["root"]
        out = tmp_path / "store"
        report = curate(dataset_root, out, shard_size=10, workers=2, progress=False)
        assert report.shards == 3 and report.shards_reused == 0
        one, two = CuratedStore(store), CuratedStore(out)
        assert one.items == two.items
        for i in (0, 11, 31):
            assert torch.equal(one.spectrogram(i), two.spectrogram(i))


class TestVideoFrames:
    def test_frames_embedded_once_and_broken_ones_listed(self, tmp_path, clip_file, monkeypatch):
        lines = []
        for i in range(4):
            sf.write(tmp_path / f"{i}.wav", clip(CLASSES[i], i, 0.3), SR)
            Image.fromarray(np.full((40, 60, 3), 60 * i, np.uint8)).save(tmp_path / f"{i}.png")
            lines.append({"path": f"{i}.wav", "label": CLASSES[i], "image": f"{i}.png"})
        (tmp_path / "3.png").write_bytes(b"not a png")
        lines.append({"path": "0.wav", "label": "tone"})
        (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
        report = curate(
            tmp_path / "m.jsonl", tmp_path / "store", clip=str(clip_file), progress=False
        )
        assert (report.items, report.images, report.skipped) == (5, 3, 1)
        [(path, reason)] = read_skipped(tmp_path / "store" / "skipped.tsv")
        assert path == str(tmp_path / "3.png") and "audio is kept without its video frame" in reason
        s = CuratedStore(tmp_path / "store")
        assert s.image_dim == 32 and s.image_encoder.startswith("sha256:")
        embeddings = [s.image_embedding(i) for i in range(5)]
        assert [e is None for e in embeddings] == [False, False, False, True, True]
        assert not torch.allclose(embeddings[0], embeddings[1])
        # resumed: nothing to embed again, so CLIP is not even loaded
        import soundguide.training.curation as curation

        def refuse(*args, **kwargs):
            raise AssertionError("CLIP loaded again")

        monkeypatch.setattr(curation, "_load_image_encoder", refuse)
        report = curate(
            tmp_path / "m.jsonl", tmp_path / "store", clip=str(clip_file), progress=False
        )
        assert (report.images, report.shards_reused) == (3, 1)
        # a changed frame is embedded again, the audio kept
        monkeypatch.undo()
        Image.fromarray(np.full((40, 60, 3), 250, np.uint8)).save(tmp_path / "0.png")
        report = curate(
            tmp_path / "m.jsonl", tmp_path / "store", clip=str(clip_file), progress=False
        )
        assert (report.images, report.shards_reused, report.computed) == (3, 1, 0)
        again = CuratedStore(tmp_path / "store")
        assert not torch.allclose(again.image_embedding(0), embeddings[0])
        assert torch.allclose(again.image_embedding(1), embeddings[1])


class TestCLI:
    def test_curate_command(self, tmp_path):
        root = write_class_folders(tmp_path / "ds", per_class=2, seconds=0.3)
        write_bad_files(root / "chirp")
        result = CliRunner().invoke(
            curate_command,
            [str(root), str(tmp_path / "store"), "-j", "1", "--shard-size", "3", "-q"],
        )
        assert result.exit_code == 0, result.output
        assert "curated 8 clips into 4 shards; skipped 3" in result.output

    def test_dataset_error_propagates_to_the_main_cli(self, tmp_path):
        result = CliRunner().invoke(curate_command, [str(tmp_path / "nope"), str(tmp_path / "s")])
        assert isinstance(result.exception, DatasetError)
        assert str(result.exception) == f"dataset not found: {tmp_path / 'nope'}"
