from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from soundguide.core.errors import DatasetError
from soundguide.training.datasets import label_text, read_dataset

SR = 44100


def wav(path, seconds=0.2):
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(SR * seconds)) / SR
    sf.write(path, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), SR)
    return path


class TestVGGSound:
    def make(self, tmp_path, rows, pattern="{ytid}_{start:06d}.wav", files=()):
        audio = tmp_path / "audio"
        audio.mkdir()
        for name in files:
            wav(audio / name)
        csv = tmp_path / "vggsound.csv"
        csv.write_text("\n".join(rows) + "\n")
        return csv, audio

    def test_rows_pattern_and_labels_with_commas(self, tmp_path):
        csv, audio = self.make(
            tmp_path,
            [
                "---g-f_I2yQ,1,people marching,test",
                '--0PQM4-hqg,30,"male speech, man speaking",train',
                "-0BIyqJj9ZU,30,male speech, man speaking,train",  # unquoted comma
                "missing0001,10,dog barking,train",
            ],
            files=["---g-f_I2yQ_000001.wav", "--0PQM4-hqg_000030.wav", "-0BIyqJj9ZU_000030.wav"],
        )
        listing = read_dataset(csv, audio_dir=audio)
        assert listing.layout == "vggsound"
        assert [(i.label, i.split) for i in listing.items] == [
            ("people marching", "test"),
            ("male speech, man speaking", "train"),
            ("male speech, man speaking", "train"),
        ]
        assert listing.items[0].source == str(audio / "---g-f_I2yQ_000001.wav")
        [(path, reason)] = listing.skipped
        assert path.endswith("missing0001_000010.wav") and "no such file (row 4" in reason

    def test_header_row_and_custom_pattern(self, tmp_path):
        csv, audio = self.make(
            tmp_path,
            ["youtube_id,start_seconds,label,split", "abc,5,cat purring,train"],
            files=["abc_5_15.flac"],
        )
        listing = read_dataset(
            csv, "vggsound", audio_dir=audio, pattern="{ytid}_{start}_{end}.flac"
        )
        assert [i.source for i in listing.items] == [str(audio / "abc_5_15.flac")]

    def test_audio_next_to_the_csv_by_default(self, tmp_path):
        wav(tmp_path / "abc_000005.wav")
        (tmp_path / "v.csv").write_text("abc,5,cat purring,train\n")
        assert len(read_dataset(tmp_path / "v.csv").items) == 1

    @pytest.mark.parametrize(
        "rows, pattern, match",
        [
            (["abc,5"], "{ytid}_{start:06d}.wav", r"line 1: expected 4 fields .* got 2"),
            (
                ["abc,5,x,train", "abd,five,x,train"],
                "{ytid}_{start:06d}.wav",
                r"line 2: start second 'five'",
            ),
            (["abc,5,x,train"], "{id}.wav", r"unknown field \{id\}; available: ytid, start"),
            (["abc,5,x,train"], "clip.wav", "uses no field"),
            ([], "{ytid}.wav", "holds no rows"),
        ],
    )
    def test_bad_csv_or_pattern_is_one_line(self, tmp_path, rows, pattern, match):
        csv, audio = self.make(tmp_path, rows)
        with pytest.raises(DatasetError, match=match) as info:
            read_dataset(csv, "vggsound", audio_dir=audio, pattern=pattern)
        assert "\n" not in str(info.value)

    def test_missing_audio_folder_names_it(self, tmp_path):
        (tmp_path / "v.csv").write_text("abc,5,x,train\n")
        with pytest.raises(
            DatasetError, match=f"audio folder of .* not found: {tmp_path / 'nope'}"
        ):
            read_dataset(tmp_path / "v.csv", audio_dir=tmp_path / "nope")


class TestClassFolders:
    def test_classes_files_and_strays(self, tmp_path):
        wav(tmp_path / "dog_bark" / "a.wav")
        wav(tmp_path / "dog_bark" / "sub" / "b.WAV")
        wav(tmp_path / "rain" / "c.wav")
        (tmp_path / "rain" / "notes.txt").write_text("not audio")
        wav(tmp_path / ".hidden" / "d.wav")
        wav(tmp_path / "stray.wav")
        listing = read_dataset(tmp_path)
        assert listing.layout == "folders"
        assert [(i.label, i.source.rsplit("/", 1)[1]) for i in listing.items] == [
            ("dog_bark", "a.wav"),
            ("dog_bark", "b.WAV"),
            ("rain", "c.wav"),
        ]
        assert listing.items[0].text == "dog bark"
        [(path, reason)] = listing.skipped
        assert path.endswith("stray.wav") and "not inside a class folder" in reason

    def test_missing_folder(self, tmp_path):
        with pytest.raises(DatasetError, match=f"^dataset not found: {tmp_path / 'nope'}$"):
            read_dataset(tmp_path / "nope")

    def test_no_class_folders(self, tmp_path):
        wav(tmp_path / "a.wav")
        with pytest.raises(DatasetError, match=f"^no class folders in {tmp_path}: expected"):
            read_dataset(tmp_path)

    def test_class_folders_without_audio(self, tmp_path):
        (tmp_path / "rain").mkdir()
        (tmp_path / "rain" / "x.txt").write_text("")
        with pytest.raises(
            DatasetError, match=f"no audio files .* in the class folders of {tmp_path}$"
        ):
            read_dataset(tmp_path, "folders")


class TestManifest:
    def test_csv_relative_paths_caption_label_split(self, tmp_path):
        wav(tmp_path / "clips" / "a.wav")
        wav(tmp_path / "clips" / "b.wav")
        (tmp_path / "m.csv").write_text(
            "Path,Caption,Label,Split\n"
            "clips/a.wav,a dog barks twice,dog,train\n"
            f"{tmp_path / 'clips' / 'b.wav'},,rain,TEST\n"
            "clips/missing.wav,,rain,train\n"
        )
        listing = read_dataset(tmp_path / "m.csv")
        assert listing.layout == "manifest"
        a, b = listing.items
        assert (a.source, a.caption, a.label, a.split) == (
            str(tmp_path / "clips" / "a.wav"),
            "a dog barks twice",
            "dog",
            "train",
        )
        assert (b.caption, b.label, b.split, b.text) == (None, "rain", "test", "rain")
        assert a.text == "a dog barks twice"
        assert listing.skipped[0][0] == str(tmp_path / "clips" / "missing.wav")

    def test_jsonl_with_aliases_and_frames(self, tmp_path):
        wav(tmp_path / "a.flac")
        lines = [
            {"audio": "a.flac", "text": "waves on rocks", "frame": "frames/a.png"},
            {"path": "a.flac", "label": "sea"},
        ]
        (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
        first, second = read_dataset(tmp_path / "m.jsonl").items
        assert first.caption == "waves on rocks" and first.image == str(
            tmp_path / "frames" / "a.png"
        )
        assert second.label == "sea" and second.image is None

    @pytest.mark.parametrize(
        "name, text, match",
        [
            (
                "m.csv",
                "file_name,label\na.wav,x\n",
                r"has no 'path' column \(found: file_name, label\)",
            ),
            ("m.csv", "path,split\na.wav,train\n", "needs a 'label' or 'caption' column"),
            ("m.csv", "path,label\na.wav,x,extra\n", "line 2: 3 fields, but the header names 2"),
            (
                "m.jsonl",
                '{"path": "a.wav", "label": "x"}\n{"path": "a.wav",\n',
                "line 2: not valid JSON",
            ),
            ("m.jsonl", "[1, 2]\n", "line 1: expected a JSON object, got list"),
            ("m.jsonl", '{"path": "a.wav"}\n', "line 1: no 'label' or 'caption'"),
            ("m.jsonl", '{"label": "x"}\n', "line 1: no audio path"),
        ],
    )
    def test_bad_manifests_are_one_line_naming_the_file(self, tmp_path, name, text, match):
        wav(tmp_path / "a.wav")
        (tmp_path / name).write_text(text)
        with pytest.raises(DatasetError, match=match) as info:
            read_dataset(tmp_path / name)
        assert str(tmp_path / name) in str(info.value) and "\n" not in str(info.value)


def test_unknown_layout_and_undetectable_file(tmp_path):
    with pytest.raises(DatasetError, match="unknown dataset layout 'zip'; available: auto"):
        read_dataset(tmp_path, "zip")  # type: ignore[arg-type]
    (tmp_path / "data.parquet").write_bytes(b"PAR1")
    with pytest.raises(DatasetError, match="cannot tell the layout of .*data.parquet"):
        read_dataset(tmp_path / "data.parquet")


def test_label_text():
    assert label_text("dog_bark") == "dog bark"
    assert label_text("  male  speech, man speaking ") == "male speech, man speaking"
