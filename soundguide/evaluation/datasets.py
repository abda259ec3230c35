"""ESC-50 and UrbanSound8K, read from their official layouts exactly as downloaded.

ESC-50 (github.com/karolpiczak/ESC-50)::

    ROOT/audio/*.wav
    ROOT/meta/esc50.csv      filename, fold, target, category, esc10, src_file, take

UrbanSound8K (urbansounddataset.weebly.com)::

    ROOT/audio/fold1 ... fold10/*.wav
    ROOT/metadata/UrbanSound8K.csv
        slice_file_name, fsID, start, end, salience, fold, classID, class

The official folds are kept as the CSV gives them (ESC-50: 5, UrbanSound8K:
10); nothing is ever reshuffled. Class ``i`` of a dataset is its ``i``-th
smallest official class id (``target`` / ``classID``), so on the full datasets
the index *is* the official id. Every problem with a layout — a missing CSV,
column or listed file, a fold number outside the official range — raises one
:class:`~soundguide.core.errors.DatasetError` line naming the path.

A part of a dataset is evaluated on what is there: folds the CSV lists no
clips of, and UrbanSound8K fold folders that are absent (their rows are left
out), give a :class:`DatasetWarning` and the folds present are used.
:meth:`AudioDataset.differences_from_official` says how a dataset differs
from the official full set (:data:`OFFICIAL_SIZES`); the reports mark the
paper's numbers as not comparable then.
"""

from __future__ import annotations

import csv
import hashlib
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from soundguide.core.errors import DatasetError
from soundguide.core.files import sha256_file


class DatasetWarning(UserWarning):
    """A dataset is read, but is not the official full set (missing folds, left-out clips)."""


@dataclass(frozen=True)
class OfficialSize:
    """Counts of an official full dataset."""

    clips: int
    classes: int
    folds: int


OFFICIAL_SIZES = {
    "esc50": OfficialSize(clips=2000, classes=50, folds=5),
    "urbansound8k": OfficialSize(clips=8732, classes=10, folds=10),
}
"""The official datasets' sizes, against which results are comparable with published ones."""


@dataclass(frozen=True)
class Clip:
    """One labelled clip of a dataset."""

    path: Path
    label: int
    """Class index into :attr:`AudioDataset.class_names` (0 .. K-1)."""
    fold: int
    """Official fold number (1-based, as in the CSV)."""


@dataclass(frozen=True)
class AudioDataset:
    """A labelled audio dataset with official cross-validation folds."""

    name: str
    """``"esc50"`` or ``"urbansound8k"`` (or a third party's name)."""
    title: str
    """Human-readable name for reports, e.g. ``"ESC-50"``."""
    root: Path
    csv_path: Path
    clips: tuple[Clip, ...]
    class_names: tuple[str, ...]
    """Raw label names as the CSV spells them (``crackling_fire``); see :func:`~soundguide.evaluation.prompts.clean_label`."""
    class_ids: tuple[int, ...]
    """The official class id of each class index (``target`` / ``classID``)."""
    num_folds: int
    """How many folds the official protocol has (5 or 10)."""
    left_out: int = 0
    """CSV rows left out because their fold's folder is absent (UrbanSound8K)."""

    def __len__(self) -> int:
        return len(self.clips)

    @property
    def labels(self) -> list[int]:
        return [c.label for c in self.clips]

    @property
    def folds(self) -> list[int]:
        return [c.fold for c in self.clips]

    @property
    def fold_ids(self) -> list[int]:
        """The folds that hold at least one clip, ascending."""
        return sorted(set(self.folds))

    @property
    def missing_folds(self) -> list[int]:
        """Official folds (1 .. :attr:`num_folds`) that hold no clip here."""
        return sorted(set(range(1, self.num_folds + 1)) - set(self.folds))

    @property
    def paths(self) -> list[Path]:
        return [c.path for c in self.clips]

    def differences_from_official(self) -> list[str]:
        """How this dataset differs from the official full set, one phrase each;
        empty when it is that set (by its counts: clips, classes, folds)."""
        official = OFFICIAL_SIZES.get(self.name)
        if official is None:
            return [f"{self.title} has no official full set known to soundguide"]
        found = []
        if len(self.clips) != official.clips:
            found.append(f"{len(self.clips)} of the official {official.clips} clips")
        if len(self.class_names) != official.classes:
            found.append(f"{len(self.class_names)} of the official {official.classes} classes")
        if len(self.fold_ids) != official.folds:
            missing = ", ".join(map(str, self.missing_folds))
            found.append(
                f"{len(self.fold_ids)} of the official {official.folds} folds (no {missing})"
            )
        return found

    def identity(self) -> str:
        """What the clips' embeddings depend on: the CSV's sha256, the root and the files.

        The files enter by name, size and modification time (a ``stat``, not a
        read), so replacing a clip invalidates cached embeddings cheaply.
        """
        digest = hashlib.sha256()
        digest.update(
            f"{self.name}\n{self.root.resolve()}\n{sha256_file(self.csv_path)}\n".encode()
        )
        for clip in self.clips:
            stat = clip.path.stat()
            digest.update(f"{clip.path.name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()


ESC50_COLUMNS = ("filename", "fold", "target", "category", "esc10", "src_file", "take")
US8K_COLUMNS = (
    "slice_file_name",
    "fsID",
    "start",
    "end",
    "salience",
    "fold",
    "classID",
    "class",
)
ESC50_FOLDS = 5
US8K_FOLDS = 10

DATASETS = {"esc50": "ESC-50", "urbansound8k": "UrbanSound8K"}
ALIASES = {"esc-50": "esc50", "us8k": "urbansound8k", "urbansound": "urbansound8k"}


def load_esc50(root: str | os.PathLike[str]) -> AudioDataset:
    """ESC-50 from ``ROOT/meta/esc50.csv`` and ``ROOT/audio/``; 5 official folds."""
    root = Path(root).expanduser()
    csv_path = root / "meta" / "esc50.csv"
    rows = _read_csv(csv_path, ESC50_COLUMNS)
    audio = root / "audio"
    if not audio.is_dir():
        raise DatasetError(f"ESC-50 audio folder not found: {audio}")
    entries = [
        (
            audio / row["filename"],
            _int(row, "target", csv_path, line),
            row["category"].strip(),
            _fold(row, csv_path, line, ESC50_FOLDS),
        )
        for line, row in rows
    ]
    return _build("esc50", root, csv_path, entries, ESC50_FOLDS)


def load_urbansound8k(root: str | os.PathLike[str]) -> AudioDataset:
    """UrbanSound8K from ``ROOT/metadata/UrbanSound8K.csv`` and ``ROOT/audio/foldN/``; 10 folds."""
    root = Path(root).expanduser()
    csv_path = root / "metadata" / "UrbanSound8K.csv"
    rows = _read_csv(csv_path, US8K_COLUMNS)
    entries = []
    present: dict[int, bool] = {}
    absent_rows = 0
    for line, row in rows:
        fold = _fold(row, csv_path, line, US8K_FOLDS)
        folder = root / "audio" / f"fold{fold}"
        if fold not in present:
            present[fold] = folder.is_dir()
        if not present[fold]:
            absent_rows += 1
            continue
        entries.append(
            (
                folder / row["slice_file_name"],
                _int(row, "classID", csv_path, line),
                row["class"].strip(),
                fold,
            )
        )
    absent = sorted(f for f, ok in present.items() if not ok)
    if not entries:
        raise DatasetError(
            f"none of the fold folders that {csv_path.name} lists exists: "
            f"{', '.join(str(root / 'audio' / f'fold{f}') for f in absent)}"
        )
    note = None
    if absent:
        folders = ", ".join(f"fold{f}" for f in absent)
        note = (
            f"fold folder(s) {folders} not found under {root / 'audio'}; "
            f"{absent_rows} clip(s) listed in {csv_path.name} left out"
        )
    return _build("urbansound8k", root, csv_path, entries, US8K_FOLDS, absent_rows, note)


def load_dataset(name: str, root: str | os.PathLike[str]) -> AudioDataset:
    """``load_esc50`` or ``load_urbansound8k`` by name (``esc50``, ``urbansound8k``, ``us8k``)."""
    key = ALIASES.get(name.lower(), name.lower())
    if key == "esc50":
        return load_esc50(root)
    if key == "urbansound8k":
        return load_urbansound8k(root)
    from soundguide.core.registry import unknown_name_message

    raise DatasetError(unknown_name_message("dataset", name, DATASETS))


# -- helpers ------------------------------------------------------------------------


def _read_csv(path: Path, columns: Sequence[str]) -> list[tuple[int, dict[str, str]]]:
    """Rows of a metadata CSV with their line numbers (the header is line 1)."""
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "not found"
        raise DatasetError(f"dataset metadata {what}: {path}")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in reader.fieldnames or []]
            missing = [c for c in columns if c not in header]
            if missing:
                raise DatasetError(
                    f"{path} lacks the column(s) {', '.join(missing)} "
                    f"(header: {', '.join(header) or 'empty'})"
                )
            reader.fieldnames = header
            rows = [
                (reader.line_num, {k: (v or "").strip() for k, v in row.items() if k})
                for row in reader
                if any((v or "").strip() for k, v in row.items() if k)
            ]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from None
    if not rows:
        raise DatasetError(f"{path} lists no clips")
    return rows


def _int(row: dict[str, str], column: str, path: Path, line: int) -> int:
    value = row[column]
    try:
        return int(value)
    except ValueError:
        raise DatasetError(
            f"{path} line {line}: {column} must be an integer, got {value!r}"
        ) from None


def _fold(row: dict[str, str], path: Path, line: int, num_folds: int) -> int:
    fold = _int(row, "fold", path, line)
    if not 1 <= fold <= num_folds:
        raise DatasetError(
            f"{path} line {line}: fold {fold} is outside the official folds 1..{num_folds}"
        )
    return fold


def _build(
    name: str,
    root: Path,
    csv_path: Path,
    entries: list[tuple[Path, int, str, int]],
    num_folds: int,
    left_out: int = 0,
    note: str | None = None,
) -> AudioDataset:
    names: dict[int, str] = {}
    for path, class_id, label, _fold_id in entries:
        if names.setdefault(class_id, label) != label:
            raise DatasetError(
                f"{csv_path}: class id {class_id} is named both {names[class_id]!r} and "
                f"{label!r} ({path.name})"
            )
    missing = [path for path, *_ in entries if not path.is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DatasetError(f"audio file listed in {csv_path.name} not found: {missing[0]}{more}")
    class_ids = tuple(sorted(names))
    index = {class_id: i for i, class_id in enumerate(class_ids)}
    clips = tuple(
        Clip(path=path, label=index[class_id], fold=fold) for path, class_id, _, fold in entries
    )
    dataset = AudioDataset(
        name=name,
        title=DATASETS[name],
        root=root,
        csv_path=csv_path,
        clips=clips,
        class_names=tuple(names[i] for i in class_ids),
        class_ids=class_ids,
        num_folds=num_folds,
        left_out=left_out,
    )
    empty = dataset.missing_folds
    if empty:
        why = note or f"{csv_path} lists no clips of them"
        warnings.warn(
            DatasetWarning(
                f"{DATASETS[name]} at {root} has no clips of fold(s) "
                f"{', '.join(map(str, empty))} ({why}): evaluating on the "
                f"{len(dataset.fold_ids)} of {num_folds} official folds present; results are "
                "not comparable with published ones"
            ),
            stacklevel=3,
        )
    return dataset
