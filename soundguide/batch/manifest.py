"""A batch manifest: one edit per row (CSV or JSONL), each validated as a run config.

Columns (every one optional; a CSV cell left empty is "not given")::

    id            the row's name and output folder (items/<id>/); default: its row number
    audio         audio file(s) for the config's [[guidance]] of type "audio", in order
    prompt        prompt(s) for its [[guidance]] of type "text", in order
    image         a photo to start from (optimization.image)
    latent        a latent file to start from (optimization.latent)
    latent_index  the row of that file (optimization.latent_index)
    seed          the start latent's seed (optimization.seed)
    set           config overrides, as --set writes them: guidance.0.weight=0.5

In a CSV, several audio files, prompts or overrides in one cell are separated
by ``;`` (a ``;`` inside a quoted TOML string stays); in JSONL they are lists.
Paths in ``audio``, ``image`` and ``latent`` resolve against the manifest's
folder; paths in ``set`` values, like those of ``--set``, against the config's.

Every row becomes the run config it describes (the config file, then
``--set``, then the row) and is validated before anything runs, with errors
located as ``manifest.csv row 7: guidance.0.wieght: extra inputs are not
permitted``. Rows are numbered from 1, not counting a CSV's header line.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from soundguide.core.config import (
    apply_overrides,
    config_from_dict,
    parse_override,
    read_toml,
)
from soundguide.core.errors import ConfigError
from soundguide.core.registry import Registries, closest

COLUMNS = ("id", "audio", "prompt", "image", "latent", "latent_index", "seed", "set")
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
MAX_ROWS = 1_000_000

PER_ITEM_FIELDS: dict[str, str] = {"audio": "path", "image": "path", "text": "prompt"}
"""Guidance type -> the field that may be a list (one value per batch item). Rows that
differ only there (and in seed, photo or latent row) share one optimization."""


@dataclass
class Item:
    """One manifest row: where it is, its id and its validated run config."""

    number: int
    id: str
    config: Any
    batch_key: str
    """Rows with equal keys may be optimized together (their shared settings are equal)."""
    per_item: dict[str, Any] = field(default_factory=dict)
    """Config location -> this row's value, for the keys a batch makes lists of."""
    inputs: list[str] = field(default_factory=list)
    """This row's own input files (absolute), told apart from its batch-mates' in run.json."""


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The manifest's rows as dicts (CSV by its header, JSONL one object a line)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"manifest not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read manifest {path}: {exc}") from None
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise ConfigError(f"{path.name} line {number}: invalid JSON: {exc}") from None
            if not isinstance(row, dict):
                raise ConfigError(f"{path.name} line {number}: expected a JSON object per line")
            rows.append(row)
    elif path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))  # quoted newlines stay
        columns = reader.fieldnames or []
        if len(set(columns)) != len(columns):
            raise ConfigError(f"{path.name}: a column name appears twice in the header")
        rows = []
        for row in reader:
            if None in row:
                raise ConfigError(
                    f"{path.name} row {len(rows) + 1}: more cells than the header has columns"
                )
            rows.append({k: v for k, v in row.items() if v is not None and v.strip() != ""})
    else:
        raise ConfigError(f"manifest {path}: expected a .csv or .jsonl file")
    if not rows:
        raise ConfigError(f"manifest {path} has no rows")
    if len(rows) > MAX_ROWS:
        raise ConfigError(f"manifest {path} has {len(rows)} rows; at most {MAX_ROWS}")
    for number, row in enumerate(rows, 1):
        for column in row:
            if column not in COLUMNS:
                match = closest(str(column), COLUMNS)
                mean = f" (did you mean {match!r}?)" if match else ""
                raise ConfigError(
                    f"{path.name} row {number}: unknown column {column!r}{mean}; "
                    f"columns: {', '.join(COLUMNS)}"
                )
    return rows


def split_cell(text: str) -> list[str]:
    """``a; b`` -> ``["a", "b"]``; a ``;`` inside single or double quotes does not split."""
    parts, current, quote = [], [], None
    for char in text:
        if quote is None and char in "\"'":
            quote = char
        elif char == quote:
            quote = None
        if char == ";" and quote is None:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def _many(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        return split_cell(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ConfigError(f"{where}: expected a string or a list of strings")


def _integer(value: Any, where: str) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        return int(value)
    raise ConfigError(f"{where}: expected an integer, got {value!r}")


def _row_id(row: dict[str, Any], number: int, where: str) -> str:
    if "id" not in row:
        return str(number)
    value = row["id"]
    value = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise ConfigError(
            f"{where}: id {value!r} cannot name a folder: use letters, digits, '.', '_' "
            "and '-' (at most 100, not starting with '.', '_' or '-')"
        )
    return value


def _row_overrides(
    row: dict[str, Any], data: dict[str, Any], base: Path, where: str
) -> list[list[str]]:
    """Apply a row's columns to raw config ``data``; return the keys it set."""
    keys: list[list[str]] = []
    guidance = data.get("guidance") if isinstance(data.get("guidance"), list) else []
    for column, kind in (("audio", "audio"), ("prompt", "text")):
        if column not in row:
            continue
        values = _many(row[column], f"{where}: {column}")
        slots = [i for i, g in enumerate(guidance) if isinstance(g, dict) and g.get("type") == kind]
        if len(values) > len(slots):
            raise ConfigError(
                f"{where}: {column}: {len(values)} given, but the config has {len(slots)} "
                f"[[guidance]] of type {kind!r} to take them"
            )
        for i, value in zip(slots, values, strict=False):
            field_name = PER_ITEM_FIELDS[kind]
            guidance[i][field_name] = str(base / value) if column == "audio" else value
            keys.append(["guidance", str(i), field_name])
    optimization = data.setdefault("optimization", {})
    if not isinstance(optimization, dict):
        raise ConfigError(f"{where}: the config's optimization is not a table")
    for column in ("image", "latent"):
        if column in row:
            value = row[column]
            if not isinstance(value, str):
                raise ConfigError(f"{where}: {column}: expected a path, got {value!r}")
            optimization[column] = str(base / value)
            keys.append(["optimization", column])
    for column in ("latent_index", "seed"):
        if column in row:
            optimization[column] = _integer(row[column], f"{where}: {column}")
            keys.append(["optimization", column])
    if "set" in row:
        texts = _many(row["set"], f"{where}: set")
        try:
            apply_overrides(data, texts)
            keys += [parse_override(text)[0] for text in texts]
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc.message.replace('--set', 'set')}") from None
    return keys


def _batch_key(config: Any) -> tuple[str, dict[str, Any], list[str]]:
    """The row's shared settings (a key), its per-item values and its own input files."""
    data = config.model_dump(mode="json")
    per_item: dict[str, Any] = {}
    scalar = True
    opt = data["optimization"]
    for name in ("seed", "image", "latent_index"):
        value = opt.pop(name)
        per_item[f"optimization.{name}"] = value
        scalar &= not isinstance(value, list)
    if opt.get("latent") is not None and per_item["optimization.latent_index"] is None:
        scalar = False  # a whole latent stack: its number of items is the file's
    opt.pop("batch")
    for i, g in enumerate(data["guidance"]):
        name = PER_ITEM_FIELDS.get(g["type"])
        if name is not None:
            value = g.pop(name)
            per_item[f"guidance.{i}.{name}"] = value
            scalar &= not isinstance(value, list)
    shape = sorted(k for k, v in per_item.items() if v is not None)
    key = json.dumps({"shared": data, "given": shape}, sort_keys=True)
    inputs = [
        str(v)
        for k, v in per_item.items()
        if isinstance(v, str) and (k.endswith(".path") or k == "optimization.image")
    ]
    return (key if scalar else ""), per_item, inputs


def load_items(
    config_path: Path,
    manifest_path: Path,
    registries: Registries,
    overrides: list[str],
) -> list[Item]:
    """Every row's validated run config; the first bad row raises a located ConfigError."""
    base_data = apply_overrides(read_toml(config_path), overrides)
    cli_keys = [parse_override(text)[0] for text in overrides]
    rows = read_rows(manifest_path)
    base = manifest_path.parent.resolve()
    items: list[Item] = []
    seen: dict[str, int] = {}
    for number, row in enumerate(rows, 1):
        where = f"{manifest_path.name} row {number}"
        row_id = _row_id(row, number, where)
        if row_id in seen:
            raise ConfigError(f"{where}: id {row_id!r} is also the id of row {seen[row_id]}")
        seen[row_id] = number
        data = copy.deepcopy(base_data)
        row_keys = _row_overrides(row, data, base, where)

        def name(loc: tuple[str, ...], row_keys=row_keys, where=where) -> str:
            text = ".".join(loc)
            if any(tuple(k[: len(loc)]) == loc[: len(k)] for k in row_keys):
                return f"{where}: {text}"
            return f"--set {text}"

        config = config_from_dict(
            data,
            registries,
            base_dir=config_path.parent,
            source=str(config_path),
            overridden=[*cli_keys, *row_keys],
            override_name=name,
        )
        problem = _one_item_problem(config)
        if problem:
            raise ConfigError(f"{where}: {problem}", hint="--batch-size groups rows into batches")
        key, per_item, inputs = _batch_key(config)
        items.append(Item(number, row_id, config, key or f"solo:{number}", per_item, inputs))
    return items


def _one_item_problem(config: Any) -> str | None:
    """Why a row's config would optimize more than one item, or None."""
    opt = config.optimization
    if opt.batch not in (None, 1):
        return "optimization.batch: a manifest row is one edit; remove it"
    for name in ("seed", "image", "latent_index"):
        if isinstance(getattr(opt, name), list):
            return f"optimization.{name}: a manifest row is one edit; give one value, not a list"
    for i, g in enumerate(config.guidance):
        name = PER_ITEM_FIELDS.get(g.type)
        if name is not None and isinstance(getattr(g, name), list):
            return f"guidance.{i}.{name}: a manifest row is one edit; give one value, not a list"
    return None
