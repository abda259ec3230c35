"""The records of a training run: ``log.jsonl`` always, TensorBoard when it is installed,
and ``run.json``, what the run was trained against (:func:`clip_report`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from soundguide.core.files import atomic_write_text

LOG_NAME = "log.jsonl"
RUN_REPORT = "run.json"

RELEASED_TEXT_TOWERS: dict[tuple[int, int, int], tuple[str, ...]] = {
    (512, 512, 12): ("ViT-B/32", "ViT-B/16", "RN101"),
    (768, 768, 12): ("ViT-L/14", "ViT-L/14@336px", "RN50x16"),
    (1024, 512, 12): ("RN50",),
    (640, 640, 12): ("RN50x4",),
    (1024, 1024, 12): ("RN50x64",),
}
"""OpenAI's released CLIP models by the shape of their text tower, the part training
uses: (embed dim, width, layers) -> models. All have 64-wide heads, a context of 77
tokens and a vocabulary of 49408."""

PAPER_CLIP = "ViT-B/32"
"""The CLIP the paper's SoundCLIP was trained against."""


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


def clip_report(name_or_path: str, *, trust: bool = False) -> dict[str, Any]:
    """What a run's text targets come from: the CLIP file's sha256 and shape, released or not.

    A model name (``"ViT-B/32"``) is OpenAI's file, whose sha256 the download
    checks. A local file is hashed: OpenAI's sha256 makes it that released
    file; otherwise its text tower's shape is read off the state dict (without
    building the model) and compared with the released models'. A CLIP with
    none of their shapes, such as the tiny random one ``soundguide demo``
    writes (``clip-tiny.pt``), is not a released model: an encoder trained
    against it fits that CLIP only, for smoke tests and offline demos. Such a
    report has a ``note`` saying so; the others have ``note: None``.
    """
    from soundguide.encoders.clip_weights import CLIP_MODELS

    shape_of = {name: shape for shape, names in RELEASED_TEXT_TOWERS.items() for name in names}
    digests = {entry.split("/")[0]: name for name, entry in CLIP_MODELS.items()}
    path = Path(name_or_path).expanduser()
    file: str | None = None
    digest: str | None = None
    openai: str | None = None
    if path.is_file():
        from soundguide.core.files import sha256_file

        file, digest = str(path.resolve()), sha256_file(path)
        openai = digests.get(digest)
    elif name_or_path in CLIP_MODELS:
        digest, openai = CLIP_MODELS[name_or_path].split("/")[0], name_or_path
    tower: dict[str, int] | None = None
    if openai is not None:
        embed, width, layers = shape_of[openai]
        tower = {"embed_dim": embed, "width": width, "layers": layers}
        tower.update(context_length=77, vocab_size=49408)
    elif file is not None:
        tower = _text_tower(path, trust)
    key = (tower["embed_dim"], tower["width"], tower["layers"]) if tower else None
    standard = tower is not None and (tower["context_length"], tower["vocab_size"]) == (77, 49408)
    same_shape = list(RELEASED_TEXT_TOWERS.get(key, ())) if standard and key else []
    released = openai is not None or bool(same_shape)
    note = None
    if not released:
        paper = shape_of[PAPER_CLIP]
        if file is None:
            what = "neither a CLIP file nor a released model's name"
        elif key is None:
            what = "it has no text tower"
        else:
            what = (
                f"its text tower (embed dim {key[0]}, width {key[1]}, {key[2]} layers) has "
                f"none of the released models' shapes ({PAPER_CLIP}: embed dim {paper[0]}, "
                f"width {paper[1]}, {paper[2]} layers)"
            )
        note = (
            f"not a released CLIP model: {what}; the encoder trained against it fits this "
            "CLIP only (smoke tests, offline demos), not the paper's space"
        )
    return {
        "clip": str(name_or_path),
        "file": file,
        "sha256": digest,
        "openai_file": openai,
        "text_tower": tower,
        "released_shape": same_shape,
        "released": released,
        "note": note,
    }


def _text_tower(path: Path, trust: bool) -> dict[str, int] | None:
    from soundguide.encoders.clip import read_clip_state, text_config

    state = read_clip_state(path, trust=trust)
    sizes = text_config(state)
    if sizes is None:
        return None
    return {
        "embed_dim": int(state["text_projection"].shape[1]),
        "width": sizes["transformer_width"],
        "layers": sizes["transformer_layers"],
        "context_length": sizes["context_length"],
        "vocab_size": sizes["vocab_size"],
    }


def write_run_report(out: Path, report: dict[str, Any]) -> None:
    """``OUT/run.json``, atomically."""
    atomic_write_text(out / RUN_REPORT, json.dumps(report, indent=2) + "\n")
