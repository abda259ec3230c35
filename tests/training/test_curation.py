from __future__ import annotations

import json
import shutil

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
from soundguide.training.curation import curate
from soundguide.training.store import INDEX_NAME, CuratedStore, read_skipped
from tests.training.helpers import CLASSES, SR, clip, write_bad_files, write_class_folders


def shard_files(store_dir):
    return {p.name: p.stat().st_mtime_ns for p in (store_dir / "shards").iterdir()}


class TestStore:
    def test_index_and_arrays(self, store, dataset):
        s = CuratedStore(store)
        assert len(s) == 32 and s.labels == sorted(CLASSES)
        assert s.index["frontend"]["dtype"] == "float16"
        assert [p.name for p in sorted((store / "shards").glob("*.npy"))] == [
            "00000.npy",
            "00001.npy",
            "00002.npy",
            "00003.npy",
        ]
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
        assert (report.shards, report.shards_reused) == (4, 4)
        assert shard_files(copy) == before

    def test_changed_file_recomputes_only_its_shard(self, tmp_path):
        root = write_class_folders(tmp_path / "ds", per_class=3, seconds=0.3)
        out = tmp_path / "store"
        curate(root, out, shard_size=4, progress=False)
        before = shard_files(out)
        sf.write(root / "tone" / "tone_0.wav", clip("chirp", 7, 0.3), SR)  # item 6: shard 1 of 0..2
        report = curate(root, out, shard_size=4, progress=False)
        assert report.shards_reused == 2
        after = shard_files(out)
        changed = {name for name in after if after[name] != before.get(name)}
        assert changed == {"00001.npy", "00001.json"}

    def test_interrupted_run_leaves_no_corrupt_shard_and_resumes(self, tmp_path, monkeypatch):
        root = write_class_folders(tmp_path / "ds", per_class=3, seconds=0.3)
        reference = curate(root, tmp_path / "reference", shard_size=4, progress=False)
        import soundguide.encoders.audio as audio

        real, calls = audio.load_audio, []

        def interrupted(*args, **kwargs):
            calls.append(args[0])
            if len(calls) == 6:  # in the middle of the second shard
                raise KeyboardInterrupt
            return real(*args, **kwargs)

        monkeypatch.setattr(audio, "load_audio", interrupted)
        out = tmp_path / "store"
        with pytest.raises(KeyboardInterrupt):
            curate(root, out, shard_size=4, progress=False)
        assert sorted(p.name for p in (out / "shards").iterdir()) == ["00000.json", "00000.npy"]
        assert not (out / INDEX_NAME).exists()
        monkeypatch.setattr(audio, "load_audio", real)
        report = curate(root, out, shard_size=4, progress=False)
        assert (report.shards_reused, report.items) == (1, reference.items)
        fresh, resumed = CuratedStore(tmp_path / "reference"), CuratedStore(out)
        assert fresh.items == resumed.items
        for i in range(len(fresh)):
            assert torch.equal(fresh.spectrogram(i), resumed.spectrogram(i))

    def test_two_workers_write_the_same_store(self, store, tmp_path):
        dataset_root = CuratedStore(store).index["dataset"]["root"]
        out = tmp_path / "store"
        report = curate(dataset_root, out, shard_size=10, workers=2, progress=False)
        assert report.shards == 4 and report.shards_reused == 0
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
