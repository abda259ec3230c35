"""Dataset layouts that ``soundguide curate`` reads: what to embed and under which label.

Three layouts, each turned into a :class:`DatasetListing` (items plus the rows
that were skipped and why):

- ``vggsound``: the VGGSound CSV (``youtube_id,start_seconds,label,split``, no
  header row in the official file; a header is recognised and skipped) and one
  folder of audio files named by a ``--pattern`` such as ``{ytid}_{start:06d}.wav``
  (fields: ``ytid``, ``start``, ``end`` = start + 10, ``label``, ``split``).
  Labels with unquoted commas (``male speech, man speaking``) are rejoined.
- ``folders``: one folder per class, ``root/<class>/**/*.wav|flac|ogg|mp3|aiff``;
  the class is the folder name.
- ``manifest``: a CSV (with a header) or JSONL file with a ``path`` column and a
  ``label`` and/or ``caption`` column, optionally ``image`` (a video frame) and
  ``split``. Relative paths are resolved against the manifest's folder.

Rows whose audio file does not exist are skipped and listed, never dropped in
silence. A layout that cannot be read at all (a missing folder, a CSV with the
wrong columns, a broken JSON line) is a one-line :class:`DatasetError` naming
the path.
"""

from __future__ import annotations

import csv
import json
import os
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from soundguide.core.errors import DatasetError
from soundguide.evaluation.prompts import clean_label

Layout = Literal["auto", "vggsound", "folders", "manifest"]
LAYOUTS = ("auto", "vggsound", "folders", "manifest")

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".mp3", ".aif", ".aiff")
DEFAULT_PATTERN = "{ytid}_{start:06d}.wav"
VGGSOUND_FIELDS = ("ytid", "start", "end", "label", "split")
VGGSOUND_CLIP_SECONDS = 10

# Manifest column names, first is canonical; matched case-insensitively.
_COLUMNS = {
    "path": ("path", "audio", "audio_path", "file", "filename"),
    "label": ("label", "class", "category"),
    "caption": ("caption", "text", "description"),
    "image": ("image", "image_path", "frame", "video_frame"),
    "split": ("split", "subset", "fold_split"),
}


@dataclass(frozen=True)
class Item:
    """One clip to curate.

    ``label`` is a class name (zero-shot classes, text templates), ``caption``
    free text used as is; at least one of them is set. ``image`` is a video
    frame for the optional audio-image term. ``split`` is the dataset's own
    split (``train``, ``test``...), or None.
    """

    source: str
    label: str | None = None
    caption: str | None = None
    image: str | None = None
    split: str | None = None

    @property
    def text(self) -> str:
        """What CLIP reads for this item without a template: the caption, else the label."""
        if self.caption is not None and self.caption.strip():
            return self.caption.strip()
        return label_text(self.label or "")


@dataclass
class DatasetListing:
    """Items of a dataset in a fixed order, plus ``(path, reason)`` of every row skipped."""

    root: Path
    layout: str
    items: list[Item] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


label_text = clean_label
"""A class name as CLIP should read it: ``dog_bark`` -> ``dog bark`` (the one cleaning
of :mod:`soundguide.evaluation.prompts`, shared with zero-shot evaluation)."""


def read_dataset(
    source: str | os.PathLike[str],
    layout: Layout = "auto",
    *,
    pattern: str = DEFAULT_PATTERN,
    audio_dir: str | os.PathLike[str] | None = None,
) -> DatasetListing:
    """Read any layout; ``auto`` picks it from ``source``.

    A folder is ``folders``; a ``.jsonl``/``.json`` file is ``manifest``; a CSV
    whose first row names a ``path`` column is ``manifest``; one whose first row
    is a VGGSound row or header is ``vggsound``; one whose header names other
    manifest columns is ``manifest``; any other CSV ``vggsound``.
    """
    path = Path(source).expanduser()
    if layout not in LAYOUTS:
        raise DatasetError(f"unknown dataset layout {layout!r}; available: {', '.join(LAYOUTS)}")
    if layout == "auto":
        layout = detect_layout(path)
    if layout == "folders":
        return read_class_folders(path)
    if layout == "manifest":
        return read_manifest(path)
    return read_vggsound(path, audio_dir=audio_dir, pattern=pattern)


def detect_layout(path: Path) -> Layout:
    if not path.exists():
        raise DatasetError(f"dataset not found: {path}")
    if path.is_dir():
        return "folders"
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "manifest"
    if suffix in (".csv", ".tsv", ".txt"):
        first = _first_csv_row(path)
        names = {c.strip().lower() for c in first}
        if names & set(_COLUMNS["path"]):
            return "manifest"
        vggsound_header = names & {"youtube_id", "ytid", "yt_id", "start", "start_seconds"}
        numeric_start = len(first) >= 4 and _whole_number(first[1].strip()) is not None
        if vggsound_header or numeric_start:
            return "vggsound"
        # a header naming manifest columns but no path: let the manifest reader say so
        manifest_names = {alias for aliases in _COLUMNS.values() for alias in aliases}
        return "manifest" if names & manifest_names else "vggsound"
    raise DatasetError(
        f"cannot tell the layout of {path}: expected a folder of class folders, "
        "a VGGSound CSV or a CSV/JSONL manifest",
        hint="pass --layout vggsound, folders or manifest",
    )


# -- VGGSound -------------------------------------------------------------------------


def read_vggsound(
    csv_path: str | os.PathLike[str],
    *,
    audio_dir: str | os.PathLike[str] | None = None,
    pattern: str = DEFAULT_PATTERN,
) -> DatasetListing:
    """The VGGSound CSV and its audio folder (default: the CSV's folder).

    Audio file of a row: ``audio_dir / pattern.format(ytid=..., start=..., end=...,
    label=..., split=...)`` with ``start`` and ``end`` integers.
    """
    path = Path(csv_path).expanduser()
    _check_file(path, "VGGSound CSV")
    folder = Path(audio_dir).expanduser() if audio_dir is not None else path.parent
    if not folder.is_dir():
        raise DatasetError(f"audio folder of {path} not found: {folder}")
    _check_pattern(pattern)
    listing = DatasetListing(root=folder, layout="vggsound")
    rows = _read_rows(path)
    if not rows:
        raise DatasetError(
            f"{path} holds no rows: expected VGGSound rows 'youtube_id,start_seconds,label,split'"
        )
    for line, row in rows:
        if len(row) < 4:
            raise DatasetError(
                f"{path} line {line}: expected 4 fields (youtube_id, start_seconds, label, split), "
                f"got {len(row)}"
            )
        ytid, start_text, *label_parts, split = (c.strip() for c in row)
        label = ", ".join(p for p in label_parts if p)  # unquoted commas inside a label
        start = _whole_number(start_text)
        if start is None:
            if line == rows[0][0]:
                continue  # a header row
            raise DatasetError(
                f"{path} line {line}: start second {start_text!r} is not a whole number"
            )
        name = pattern.format(
            ytid=ytid, start=start, end=start + VGGSOUND_CLIP_SECONDS, label=label, split=split
        )
        audio = folder / name
        if not audio.is_file():
            listing.skipped.append((str(audio), f"no such file (row {line} of {path.name})"))
            continue
        listing.items.append(Item(source=str(audio), label=label, split=split.lower() or None))
    return listing


def _check_pattern(pattern: str) -> None:
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(pattern) if f is not None]
    except ValueError as exc:
        raise DatasetError(f"bad file name pattern {pattern!r}: {exc}") from None
    for name in names:
        if name.split(".")[0].split("[")[0] not in VGGSOUND_FIELDS:
            raise DatasetError(
                f"file name pattern {pattern!r} uses unknown field {{{name}}}; "
                f"available: {', '.join(VGGSOUND_FIELDS)}"
            )
    if not names:
        raise DatasetError(f"file name pattern {pattern!r} uses no field such as {{ytid}}")
    try:
        pattern.format(ytid="x", start=0, end=10, label="x", split="train")
    except (ValueError, IndexError, AttributeError) as exc:
        raise DatasetError(f"bad file name pattern {pattern!r}: {exc}") from None


def _whole_number(text: str) -> int | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if value == int(value) else None


# -- class folders ----------------------------------------------------------------------


def read_class_folders(root: str | os.PathLike[str]) -> DatasetListing:
    """``root/<class>/**/<audio files>``, classes and files in sorted order.

    Audio files directly in ``root`` have no class: they are skipped and listed.
    Files with other extensions (notes, images) are ignored.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise DatasetError(f"dataset folder not found: {root}")
    if not root.is_dir():
        raise DatasetError(f"dataset folder is a file, not a folder: {root}")
    listing = DatasetListing(root=root, layout="folders")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    for stray in sorted(p for p in root.iterdir() if p.is_file() and _is_audio(p)):
        listing.skipped.append((str(stray), "not inside a class folder, so it has no label"))
    if not classes:
        raise DatasetError(
            f"no class folders in {root}: expected {root}/<class>/*.wav (or .flac, .ogg, .mp3)"
        )
    for folder in classes:
        files = sorted(
            p
            for p in folder.rglob("*")
            if _is_audio(p)
            and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        )
        listing.items.extend(Item(source=str(p), label=folder.name) for p in files)
    if not listing.items:
        raise DatasetError(
            f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) in the class folders of {root}"
        )
    return listing


def _is_audio(path: Path) -> bool:
    return path.suffix.lower() in AUDIO_EXTENSIONS and path.is_file()


# -- manifests --------------------------------------------------------------------------


def read_manifest(path: str | os.PathLike[str]) -> DatasetListing:
    """A CSV (header row) or JSONL manifest: ``path`` plus ``label`` and/or ``caption``,
    optional ``image`` and ``split``. Relative paths are against the manifest's folder."""
    path = Path(path).expanduser()
    _check_file(path, "manifest")
    jsonl = path.suffix.lower() in (".jsonl", ".json", ".ndjson")
    records = _jsonl_records(path) if jsonl else _csv_records(path)
    if not records:
        raise DatasetError(f"manifest {path} holds no rows")
    listing = DatasetListing(root=path.parent, layout="manifest")
    for line, record in records:
        audio_value = _field(record, "path")
        if audio_value is None or not str(audio_value).strip():
            raise DatasetError(f"manifest {path} line {line}: no audio path")
        audio = _resolve(path.parent, str(audio_value))
        label, caption = _field(record, "label"), _field(record, "caption")
        image, split = _field(record, "image"), _field(record, "split")
        if not Path(audio).is_file():
            listing.skipped.append((audio, f"no such file (line {line} of {path.name})"))
            continue
        listing.items.append(
            Item(
                source=audio,
                label=_text_or_none(label),
                caption=_text_or_none(caption),
                image=_resolve(path.parent, str(image)) if _text_or_none(image) else None,
                split=(_text_or_none(split) or "").lower() or None,
            )
        )
    return listing


def _csv_records(path: Path) -> list[tuple[int, dict[str, str]]]:
    rows = _read_rows(path)
    if not rows:
        return []
    header = [c.strip().lower() for c in rows[0][1]]
    found = ", ".join(header) or "nothing"
    if not set(header) & set(_COLUMNS["path"]):
        raise DatasetError(
            f"manifest {path} has no 'path' column (found: {found})",
            hint="the first row must name the columns: path, label and/or caption, image, split",
        )
    if not set(header) & (set(_COLUMNS["label"]) | set(_COLUMNS["caption"])):
        raise DatasetError(f"manifest {path} needs a 'label' or 'caption' column (found: {found})")
    records = []
    for line, row in rows[1:]:
        if len(row) != len(header):
            raise DatasetError(
                f"manifest {path} line {line}: {len(row)} fields, but the header names {len(header)}"
            )
        records.append((line, dict(zip(header, row, strict=True))))
    return records


def _jsonl_records(path: Path) -> list[tuple[int, dict[str, object]]]:
    records = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read manifest {path}: {exc}") from None
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DatasetError(
                f"manifest {path} line {number}: not valid JSON ({exc.msg})"
            ) from None
        if not isinstance(record, dict):
            raise DatasetError(
                f"manifest {path} line {number}: expected a JSON object, got {type(record).__name__}"
            )
        record = {str(k).lower(): v for k, v in record.items()}
        if _field(record, "label") is None and _field(record, "caption") is None:
            raise DatasetError(f"manifest {path} line {number}: no 'label' or 'caption'")
        records.append((number, record))
    return records


def _field(record: dict, name: str) -> object | None:
    for alias in _COLUMNS[name]:
        if alias in record and record[alias] is not None:
            return record[alias]
    return None


def _text_or_none(value: object | None) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _resolve(folder: Path, value: str) -> str:
    path = Path(value.strip()).expanduser()
    return str(path if path.is_absolute() else (folder / path).resolve())


# -- helpers ----------------------------------------------------------------------------


def _check_file(path: Path, what: str) -> None:
    if not path.exists():
        raise DatasetError(f"{what} not found: {path}")
    if path.is_dir():
        raise DatasetError(f"{what} is a folder, not a file: {path}")


def _read_rows(path: Path) -> list[tuple[int, list[str]]]:
    """Non-blank CSV rows with their 1-based line numbers."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            sample = fh.read(4096)
            fh.seek(0)
            delimiter = "\t" if "\t" in sample and "," not in sample else ","
            reader = csv.reader(fh, delimiter=delimiter)
            rows = []
            for row in reader:
                if any(cell.strip() for cell in row):
                    rows.append((reader.line_num, row))
            return rows
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from None


def _first_csv_row(path: Path) -> list[str]:
    rows = _read_rows(path)
    return rows[0][1] if rows else []
