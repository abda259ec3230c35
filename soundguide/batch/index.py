"""Done items and ``DIR/index.csv``.

An item is done when ``items/<id>/run.json`` is complete JSON (written last and
atomically) and was written by this batch (its ``batch.identity`` is the
current one: the config, manifest and ``--set`` overrides hashed together).
The index is rebuilt by rank 0 at the end of every run from the items'
``run.json`` files and the outcomes the ranks report for the rest (failed,
interrupted, not run yet), so it always describes the whole manifest.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from soundguide.core.files import atomic_write_text

ITEMS_DIR = "items"
INDEX_NAME = "index.csv"
BASE_COLUMNS = ("row", "id", "status", "rank", "batch_size", "seconds", "total")
PATH_COLUMNS = ("folder", "edited", "latent", "error")


def item_folder(out: Path, item_id: str) -> Path:
    return out / ITEMS_DIR / item_id


def read_done(folder: Path, identity: str) -> dict[str, Any] | None:
    """The item's run.json when it is complete and this batch's, else None."""
    try:
        record = json.loads((folder / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    batch = record.get("batch")
    if not isinstance(batch, dict) or batch.get("identity") != identity:
        return None
    return record


def _row_from_run(record: Mapping[str, Any], folder: Path, out: Path) -> dict[str, Any]:
    batch = record["batch"]
    where = folder.relative_to(out)
    final = (record.get("losses") or {}).get("final") or {}
    row: dict[str, Any] = {
        "status": record.get("status", ""),
        "rank": batch.get("rank", ""),
        "batch_size": batch.get("batch_size", ""),
        "seconds": _number(batch.get("seconds")),
        "total": _number((final.get("total") or [None])[0]),
        "folder": str(where),
        "edited": str(where / "edited.png") if (folder / "edited.png").exists() else "",
        "latent": str(where / "latent_edited.pt"),
        "error": "",
    }
    for term, values in (final.get("terms") or {}).items():
        row[f"loss:{term}"] = _number(values[0] if values else None)
    return row


def _number(value: Any) -> str:
    return "" if value is None else repr(float(value))


def index_rows(
    out: Path,
    items: Iterable[Any],
    identity: str,
    outcomes: Mapping[str, Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """One row per manifest row: done ones from their run.json, others from ``outcomes``
    (id -> {"status", "error", "rank"}), the rest ``pending``. Paths are relative to ``out``."""
    rows = []
    for item in items:
        folder = item_folder(out, item.id)
        record = read_done(folder, identity)
        if record is not None:
            row = _row_from_run(record, folder, out)
        else:
            outcome = outcomes.get(item.id, {})
            row = {
                "status": outcome.get("status", "pending"),
                "rank": outcome.get("rank", ""),
                "error": outcome.get("error", ""),
                "folder": str(folder.relative_to(out)) if folder.exists() else "",
            }
        rows.append({"row": item.number, "id": item.id, **row})
    return rows


def write_index(out: Path, rows: list[dict[str, Any]]) -> Path:
    terms: list[str] = []
    for row in rows:
        terms += [k for k in row if k.startswith("loss:") and k not in terms]
    columns = [*BASE_COLUMNS, *terms, *PATH_COLUMNS]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(out / INDEX_NAME, buffer.getvalue())
