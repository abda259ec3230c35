"""The run log of a training run: ``log.jsonl`` always, TensorBoard when it is installed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from soundguide.core.files import atomic_write_text

LOG_NAME = "log.jsonl"


class RunLog:
    """``log.jsonl`` always; TensorBoard too when ``torch.utils.tensorboard`` imports.

    On resume, records past the checkpoint's step (written after it, then lost
    with the crash) are dropped first, so the log reads as one run.
    """

    def __init__(self, out: Path, *, truncate_after: int) -> None:
        self.path = out / LOG_NAME
        if self.path.exists():
            kept = []
            for line in self.path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if int(record.get("step", 0)) <= truncate_after:
                    kept.append(line)
            atomic_write_text(self.path, "".join(f"{line}\n" for line in kept))
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        self.tensorboard = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            pass
        else:
            self.tensorboard = SummaryWriter(
                log_dir=str(out / "tensorboard"), purge_step=truncate_after + 1
            )

    def write(self, record: dict[str, Any], scalars: tuple[str, ...] = ()) -> None:
        """One JSON line; the ``scalars`` also to TensorBoard (``train/`` or ``epoch/``)."""
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self.tensorboard is not None:
            prefix = "train" if record["event"] == "step" else "epoch"
            for key in scalars:
                self.tensorboard.add_scalar(f"{prefix}/{key}", record[key], record["step"])

    def close(self) -> None:
        self._file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


def progress_bar(total: int, initial: int, enabled: bool) -> Any:
    """A tqdm bar over optimizer steps (disabled: a no-op with the same methods)."""
    from soundguide.core.progress import progress_bar

    return progress_bar(total=total, initial=initial, unit="step", enabled=enabled, desc="training")
