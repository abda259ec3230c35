from __future__ import annotations

import csv
import shutil

import pytest

from soundguide.core.errors import DatasetError
from soundguide.evaluation.datasets import (
    OFFICIAL_SIZES,
    Clip,
    DatasetWarning,
    OfficialSize,
    load_dataset,
    load_esc50,
    load_urbansound8k,
)
from soundguide.evaluation.prompts import clean_label
from tests.evaluation.conftest import ESC50_CLASSES, US8K_CLASSES, write_esc50, write_us8k


@pytest.fixture
def esc50(tmp_path):
    return write_esc50(tmp_path / "ESC-50-master")


@pytest.fixture
def us8k(tmp_path):
    return write_us8k(tmp_path / "UrbanSound8K")


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


class TestESC50:
    def test_reads_the_official_layout(self, esc50):
        data = load_esc50(esc50.root)
        assert data.name == "esc50" and data.num_folds == 5
        assert len(data) == len(esc50.rows) == 20
        assert data.class_ids == tuple(sorted(ESC50_CLASSES))
        assert data.class_names == ("dog", "crackling_fire", "chirping_birds", "clock_tick")
        # CSV order is kept; every clip keeps the fold and class the CSV gives it
        for clip, row in zip(data.clips, esc50.rows, strict=True):
            assert clip.path == esc50.root / "audio" / row["filename"]
            assert clip.fold == int(row["fold"])
            assert data.class_ids[clip.label] == int(row["target"])
        assert data.fold_ids == [1, 2, 3, 4, 5]

    def test_missing_csv(self, esc50):
        esc50.csv_path.unlink()
        with pytest.raises(DatasetError) as exc:
            load_esc50(esc50.root)
        assert _one_line(exc) == f"dataset metadata not found: {esc50.csv_path}"

    def test_missing_listed_file(self, esc50):
        gone = esc50.root / "audio" / esc50.rows[7]["filename"]
        gone.unlink()
        with pytest.raises(DatasetError) as exc:
            load_esc50(esc50.root)
        assert _one_line(exc) == f"audio file listed in esc50.csv not found: {gone}"

    def test_missing_fold_is_evaluated_without_it(self, esc50):
        rows = [r for r in esc50.rows if r["fold"] != "4"]
        _rewrite(esc50.csv_path, rows)
        with pytest.warns(DatasetWarning) as caught:
            data = load_esc50(esc50.root)
        (warning,) = caught
        message = str(warning.message)
        assert f"ESC-50 at {esc50.root} has no clips of fold(s) 4" in message
        assert str(esc50.csv_path) in message and "\n" not in message
        assert "evaluating on the 4 of 5 official folds present" in message
        assert data.fold_ids == [1, 2, 3, 5] and data.missing_folds == [4]
        assert len(data) == 16
        assert data.differences_from_official() == [
            "16 of the official 2000 clips",
            "4 of the official 50 classes",
            "4 of the official 5 folds (no 4)",
        ]

    def test_fold_outside_the_official_range(self, esc50):
        rows = [dict(r) for r in esc50.rows]
        rows[2]["fold"] = "6"
        _rewrite(esc50.csv_path, rows)
        with pytest.raises(DatasetError) as exc:
            load_esc50(esc50.root)
        assert _one_line(exc) == (
            f"{esc50.csv_path} line 4: fold 6 is outside the official folds 1..5"
        )

    def test_missing_column(self, esc50):
        rows = [{k: v for k, v in r.items() if k != "target"} for r in esc50.rows]
        _rewrite(esc50.csv_path, rows)
        with pytest.raises(DatasetError, match="lacks the column\\(s\\) target") as exc:
            load_esc50(esc50.root)
        assert str(esc50.csv_path) in _one_line(exc)

    def test_inconsistent_class_names(self, esc50):
        rows = [dict(r) for r in esc50.rows]
        rows[5]["category"] = "cat"
        _rewrite(esc50.csv_path, rows)
        with pytest.raises(DatasetError, match="is named both"):
            load_esc50(esc50.root)


class TestUrbanSound8K:
    def test_reads_the_official_layout(self, us8k):
        data = load_urbansound8k(us8k.root)
        assert data.name == "urbansound8k" and data.num_folds == 10
        assert len(data) == 40
        assert data.class_names == tuple(US8K_CLASSES[i] for i in sorted(US8K_CLASSES))
        for clip, row in zip(data.clips, us8k.rows, strict=True):
            assert clip.path == us8k.root / "audio" / f"fold{row['fold']}" / row["slice_file_name"]
            assert clip.fold == int(row["fold"])
        assert data.fold_ids == list(range(1, 11))

    def test_missing_fold_folders_leave_their_rows_out(self, us8k):
        for fold in (3, 7):
            shutil.rmtree(us8k.root / "audio" / f"fold{fold}")
        with pytest.warns(DatasetWarning) as caught:
            data = load_urbansound8k(us8k.root)
        (warning,) = caught
        message = str(warning.message)
        assert message.startswith(f"UrbanSound8K at {us8k.root} has no clips of fold(s) 3, 7 ")
        assert f"fold folder(s) fold3, fold7 not found under {us8k.root / 'audio'}" in message
        assert "8 clip(s) listed in UrbanSound8K.csv left out" in message
        assert "evaluating on the 8 of 10 official folds present" in message
        assert data.fold_ids == [1, 2, 4, 5, 6, 8, 9, 10] and data.missing_folds == [3, 7]
        assert len(data) == 32 and data.left_out == 8
        assert all(c.path.parent.name not in ("fold3", "fold7") for c in data.clips)

    def test_csv_lacking_folds(self, us8k):
        _rewrite(us8k.csv_path, [r for r in us8k.rows if int(r["fold"]) <= 3])
        with pytest.warns(DatasetWarning, match="no clips of fold\\(s\\) 4, 5, 6, 7, 8, 9, 10"):
            data = load_urbansound8k(us8k.root)
        assert data.fold_ids == [1, 2, 3] and data.left_out == 0

    def test_no_fold_folder_at_all(self, us8k):
        shutil.rmtree(us8k.root / "audio")
        with pytest.raises(DatasetError) as exc:
            load_urbansound8k(us8k.root)
        assert _one_line(exc).startswith(
            "none of the fold folders that UrbanSound8K.csv lists exists: "
        )

    def test_missing_listed_file(self, us8k):
        row = us8k.rows[13]
        gone = us8k.root / "audio" / f"fold{row['fold']}" / row["slice_file_name"]
        gone.unlink()
        with pytest.raises(DatasetError) as exc:
            load_urbansound8k(us8k.root)
        assert _one_line(exc) == f"audio file listed in UrbanSound8K.csv not found: {gone}"

    def test_missing_csv(self, us8k):
        us8k.csv_path.unlink()
        with pytest.raises(DatasetError) as exc:
            load_urbansound8k(us8k.root)
        assert _one_line(exc) == f"dataset metadata not found: {us8k.csv_path}"

    def test_bad_fold_value(self, us8k):
        rows = [dict(r) for r in us8k.rows]
        rows[0]["fold"] = "one"
        _rewrite(us8k.csv_path, rows)
        with pytest.raises(DatasetError, match="line 2: fold must be an integer, got 'one'"):
            load_urbansound8k(us8k.root)


def test_the_official_full_set(tmp_path):
    """Counts decide: 2000 clips, 50 classes and 5 folds for ESC-50."""
    from dataclasses import replace

    data = load_esc50(write_esc50(tmp_path / "esc50").root)
    clips = tuple(Clip(path=data.clips[0].path, label=i % 50, fold=1 + i % 5) for i in range(2000))
    full = replace(
        data,
        clips=clips,
        class_names=tuple(f"c{i}" for i in range(50)),
        class_ids=tuple(range(50)),
    )
    assert full.differences_from_official() == []
    assert OFFICIAL_SIZES["urbansound8k"] == OfficialSize(clips=8732, classes=10, folds=10)
    assert replace(full, clips=clips[:-1]).differences_from_official() == [
        "1999 of the official 2000 clips"
    ]


def test_load_dataset_by_name_and_alias(esc50, us8k):
    assert load_dataset("ESC50", esc50.root).name == "esc50"
    assert load_dataset("us8k", us8k.root).name == "urbansound8k"
    with pytest.raises(DatasetError, match="unknown dataset 'esc5'.*did you mean 'esc50'"):
        load_dataset("esc5", esc50.root)


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("crackling_fire", "crackling fire"),
        ("hand_saw", "hand saw"),
        ("clock_tick", "clock tick"),
        ("car_horn", "car horn"),
        ("chirping_birds", "chirping birds"),
        ("air_conditioner", "air conditioner"),
        ("street_music", "street music"),
        ("Dog_bark", "dog bark"),
        ("jackhammer", "jackhammer"),
    ],
)
def test_clean_label(raw, clean):
    assert clean_label(raw) == clean


def test_identity_follows_csv_and_files(esc50):
    first = load_esc50(esc50.root).identity()
    assert load_esc50(esc50.root).identity() == first
    rows = list(esc50.rows)
    _rewrite(esc50.csv_path, rows[::-1])  # same clips, another CSV
    assert load_esc50(esc50.root).identity() != first


def _rewrite(path, rows):
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
