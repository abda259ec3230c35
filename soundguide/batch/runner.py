"""Running a manifest: this process's batches, one optimization each, written item by item.

::

    items   = load_items(config, manifest)          # every row validated first
    job     = init_distributed(device)              # torchrun's ranks, or one process
    rank 0: lock DIR, check/write DIR/batch.json    # one batch per DIR
    for batch in share(make_batches(items), rank):  # deterministic, by row
        skip the done items; optimize the others together (Editor)
        write items/<id>/ as a single edit would, run.json last
    gather the outcomes; rank 0 writes DIR/index.csv

A batch that fails (an unreadable audio file, a missing photo) or whose loss
goes non-finite (the engine stops a whole batch there) is run again item by
item, so one bad row fails alone and its batch-mates are done. No
tensor is shared between ranks: the launcher gives ranks and a rendezvous,
used only to check the folder at the start and gather the outcomes at the end.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from soundguide.batch.index import (
    index_rows,
    item_folder,
    read_done,
    write_index,
)
from soundguide.batch.manifest import Item
from soundguide.batch.shard import make_batches, share
from soundguide.batch.split import item_event, item_result
from soundguide.core.config import config_from_dict
from soundguide.core.engine import Editor, Stop
from soundguide.core.errors import OutputError, SoundguideError, exception_line
from soundguide.core.files import atomic_write_text, os_reason
from soundguide.core.interfaces import ModelStore
from soundguide.core.outputs import LossLog, RunWriter, StepWriter
from soundguide.core.registry import Registries
from soundguide.core.runfolder import LOCK_NAME, RunFolder, _Lock

BATCH_FILE = "batch.json"
FAIL_FAST_FILE = ".fail-fast"
"""Written by the rank whose row failed under --fail-fast; every rank stops at its next batch."""


@dataclass
class Options:
    out: Path
    batch_size: int
    trust_checkpoint: bool = False
    fail_fast: bool = False
    overwrite: bool = False
    quiet: bool = False


@dataclass
class Outcome:
    """What this run did with one row that is not (yet) done."""

    status: str  # failed | interrupted
    error: str = ""
    rank: int = 0


@dataclass
class Summary:
    done: int = 0
    skipped: int = 0
    outcomes: dict[str, Outcome] = field(default_factory=dict)


def batch_config(items: list[Item], registries: Registries) -> Any:
    """One run config for several rows that share their settings: per-item values as lists."""
    if len(items) == 1:
        return items[0].config
    data = items[0].config.model_dump(mode="json")
    photos = items[0].per_item.get("optimization.image") is not None
    for key in items[0].per_item:
        values = [item.per_item[key] for item in items]
        if all(v is None for v in values) or (key == "optimization.seed" and photos):
            continue  # a photo start has no seed to give (and refuses a seed list)
        node: Any = data
        *parents, last = key.split(".")
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[last] = values
    data["optimization"]["batch"] = len(items)
    rows = ", ".join(str(item.number) for item in items)
    return config_from_dict(data, registries, source=f"the batch of rows {rows}")


def check_folder(out: Path, identity: str, record: dict[str, Any], overwrite: bool) -> _Lock:
    """Lock DIR for this batch and refuse another batch's DIR (unless ``overwrite``)."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"output path exists and is not a folder: {out}")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output folder {out}: {os_reason(exc)}") from None
    lock = _Lock.acquire(out / LOCK_NAME)
    try:
        path = out / BATCH_FILE
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            previous = None
        except (OSError, ValueError):
            previous = {}  # unreadable: another batch's as far as we can tell
        if previous is not None and not isinstance(previous, dict):
            previous = {}
        if previous is None:
            others = [p.name for p in out.iterdir() if p.name not in (LOCK_NAME,)]
            if others and not overwrite:
                raise OutputError(
                    f"output folder is not empty and holds no batch: {out}",
                    hint="choose another --out, or pass --overwrite to write this batch there",
                )
        elif previous.get("identity") != identity and not overwrite:
            raise OutputError(
                f"{out} holds another batch (config {previous.get('config')}, manifest "
                f"{previous.get('manifest')}, created {previous.get('created')})",
                hint="choose another --out, or pass --overwrite to redo every item with this "
                "config and manifest",
            )
        if previous is None or previous.get("identity") != identity:
            atomic_write_text(path, json.dumps(record, indent=2) + "\n")
        (out / FAIL_FAST_FILE).unlink(missing_ok=True)
    except BaseException:
        lock.release()
        raise
    return lock


class BatchRunner:
    """Runs this rank's share of the batches (see the module docstring)."""

    def __init__(
        self,
        items: list[Item],
        registries: Registries,
        options: Options,
        *,
        identity: str,
        job: Any,
        stop: Stop,
        signals: list[int] | None = None,
        echo: Callable[[str], None] = print,
    ) -> None:
        self.items = items
        self.registries = registries
        self.options = options
        self.identity = identity
        self.job = job
        self.stop = stop
        self.signals = signals if signals is not None else []
        """Signals received (``stop_on_signals``): one that came while a batch was being
        written asked nothing of the engine, but it ends the run all the same."""
        self.echo = echo
        self.summary = Summary()
        self.models = ModelStore()
        """The networks this rank loaded (StyleGAN2, CLIP, SoundCLIP): loaded by its first
        batch, shared by the next ones; per-run state (noise maps, targets) is not."""

    @property
    def batches(self) -> list[list[Item]]:
        groups = make_batches([item.batch_key for item in self.items], self.options.batch_size)
        return [[self.items[i] for i in group] for group in groups]

    def run(self) -> Summary:
        out = self.options.out
        for batch in share(self.batches, self.job.rank, self.job.world_size):
            self.stop.phase = "running"  # a signal between two batches stops the run
            if self.stop.requested or self.signals:
                break
            if (out / FAIL_FAST_FILE).exists():
                self.stop.request("another process stopped at a failed row (--fail-fast)")
                break
            pending = [
                item
                for item in batch
                if read_done(item_folder(out, item.id), self.identity) is None
            ]
            self.summary.skipped += len(batch) - len(pending)
            if not pending:
                continue
            if self._attempt(pending) == "retry":
                for item in pending:
                    if self.stop.requested or self.signals:
                        break
                    self._attempt([item])
        return self.summary

    # -- one optimization ---------------------------------------------------------------
    def _attempt(self, items: list[Item]) -> str:
        """Optimize ``items`` together and write them; returns done, failed, interrupted
        or retry (a batch of several failed: run each alone)."""
        started = time.perf_counter()
        folders = [item_folder(self.options.out, item.id) for item in items]
        recorders: list[tuple[StepWriter, LossLog]] = []
        try:
            config = batch_config(items, self.registries)
            for folder in folders:
                _clear(folder)
            editor = Editor(
                config,
                self.registries,
                device=self.job.device,
                trust_checkpoint=self.options.trust_checkpoint,
                progress=False,
                stop=self.stop,
                models=self.models,
            )
            out_cfg = config.output
            for folder in folders:
                recorders.append(
                    (
                        StepWriter(
                            folder,
                            save_every=out_cfg.save_every,
                            gif=out_cfg.gif,
                            steps=config.optimization.steps,
                            on_error=self._failed_write,
                        ),
                        LossLog(folder / "losses.csv", on_error=self._failed_write),
                    )
                )

            def forward(event: Any) -> None:
                for i, pair in enumerate(recorders):
                    sliced = item_event(event, i)
                    for recorder in pair:
                        recorder(sliced)

            editor.subscribe(forward)
            result = editor.run()
        except KeyboardInterrupt:  # a signal while the models load
            _close(recorders)
            self.stop.request("interrupted")
            return self._record(items, "interrupted", "interrupted before the first step")
        except Exception as exc:
            _close(recorders)
            return self._failed(items, exc)
        if result.status == "interrupted":
            _close(recorders)
            return self._record(items, "interrupted", result.message)
        if result.error is not None:
            _close(recorders)
            return self._failed(items, result.error)
        if result.status == "nonfinite" and len(items) > 1:
            # the engine stops a whole batch at one item's non-finite loss: each row
            # alone gets the outcome it would have on its own
            _close(recorders)
            self._say(f"a batch of {len(items)} went non-finite; running its rows one by one")
            return "retry"
        if result.edited_latent.shape[0] != len(items):
            _close(recorders)
            message = (
                f"the run made {result.edited_latent.shape[0]} items, not 1: a manifest row is "
                "one edit (give latent_index for a latent stack)"
            )
            return self._record(items, "failed", message)
        seconds = (time.perf_counter() - started) / len(items)
        for i, item in enumerate(items):
            others = [p for j, other in enumerate(items) if j != i for p in other.inputs]
            extra = {
                "batch": {
                    "identity": self.identity,
                    "row": item.number,
                    "id": item.id,
                    "rank": self.job.rank,
                    "world_size": self.job.world_size,
                    "batch_size": len(items),
                    "batch_rows": [other.number for other in items],
                    "seconds": seconds,
                }
            }
            try:
                RunWriter(folders[i]).write_result(
                    item_result(result, i, own=item.inputs, others=others),
                    item.config,
                    device=str(self.job.device),
                    extra=extra,
                    recorders=recorders[i],
                )
            except OutputError as exc:
                self._record([item], "failed", exc.message)
                self.stop.request(f"could not write row {item.number}", status="failed")
                continue
            self.summary.done += 1
        rows = ", ".join(f"{item.number} ({item.id})" for item in items)
        self._say(f"{_plural(len(items), 'row')} {rows}: {result.status}, {seconds:.2f} s/item")
        return "done"

    def _failed(self, items: list[Item], exc: BaseException) -> str:
        self.stop.phase = "running"  # not "preparing" (a signal would raise anywhere)
        if len(items) > 1:
            self._say(f"a batch of {len(items)} failed ({_line(exc)}); running its rows one by one")
            return "retry"
        return self._record(items, "failed", _line(exc))

    def _record(self, items: list[Item], status: str, error: str) -> str:
        self.stop.phase = "running"
        for item in items:
            folder = item_folder(self.options.out, item.id)
            with contextlib.suppress(OSError):
                folder.rmdir()  # where nothing was written: no empty folder left behind
            self.summary.outcomes[item.id] = Outcome(status, error, self.job.rank)
            if status == "failed":
                self._say(f"row {item.number} ({item.id}): failed: {error}", always=True)
        if status == "failed" and self.options.fail_fast and not self.stop.requested:
            atomic_write_text(
                self.options.out / FAIL_FAST_FILE, f"row {items[0].number}: {error}\n"
            )
            self.stop.request("stopped at the first failed row (--fail-fast)", status="failed")
        return status

    def _failed_write(self, message: str) -> None:
        self.stop.request(message, status="failed")

    def _say(self, text: str, *, always: bool = False) -> None:
        if self.options.quiet and not always:
            return
        prefix = f"[rank {self.job.rank}] " if self.job.distributed else ""
        self.echo(prefix + text)


def _clear(folder: Path) -> None:
    """Make an item's folder ready to be written: not done, none of an earlier try's files."""
    try:
        (folder / "run.json").unlink(missing_ok=True)  # first: never "done" with stale files
        if folder.is_dir():
            RunFolder(folder).remove_own_files()
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot prepare {folder}: {os_reason(exc)}") from None


def _close(recorders: list[tuple[StepWriter, LossLog]]) -> None:
    for _, log in recorders:
        log.finish()


def _line(exc: BaseException) -> str:
    return exc.message if isinstance(exc, SoundguideError) else exception_line(exc)


def _plural(n: int, word: str) -> str:
    return word if n == 1 else f"{word}s"


def batch_record(
    config: Path, manifest: Path, overrides: list[str], identity: str, rows: int
) -> dict[str, Any]:
    """What DIR/batch.json says about the batch that owns the folder."""
    return {
        "identity": identity,
        "config": str(config.resolve()),
        "manifest": str(manifest.resolve()),
        "overrides": overrides,
        "rows": rows,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def finish_index(
    out: Path, items: list[Item], identity: str, outcomes: list[dict[str, Outcome]]
) -> tuple[Path, dict[str, int]]:
    """Rank 0: merge every rank's outcomes with the items' run.json into DIR/index.csv."""
    merged: dict[str, dict[str, Any]] = {}
    for part in outcomes:
        for item_id, outcome in part.items():
            merged[item_id] = {
                "status": outcome.status,
                "error": outcome.error,
                "rank": outcome.rank,
            }
    rows = index_rows(out, items, identity, merged)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    return write_index(out, rows), counts
