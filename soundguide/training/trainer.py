"""Contrastive training of the SoundCLIP audio encoder, on one process or many (DDP).

One optimizer step on a global batch of ``B`` clips, split over ``W`` ranks and
``K`` accumulation micro-batches per rank:

- every clip is encoded twice (itself and its SpecAugment view) in one forward;
- the loss (:class:`~soundguide.training.loss.ContrastiveLoss`) is computed over
  the *global* batch on every rank, so each clip has all ``B - 1`` negatives;
- ``K = 1``: embeddings are gathered with a differentiable all-gather; the
  gather's backward sums what every rank computed for a slice (``W`` equal
  copies), and DDP's gradient averaging divides by ``W``: the exact gradient;
- ``K > 1``: gradient caching: embeddings of all micro-batches are computed
  without a graph, the loss is back-propagated to them, then each micro-batch
  is encoded again with a graph and back-propagated with its cached gradient
  (one extra forward; memory of one micro-batch; the exact gradient again).

Batch norm: each forward sees one micro-batch, a rank's chunk
(:mod:`~soundguide.training.batchnorm` keeps the running statistics equal to
a 1-process run's).

The temperature lives outside DDP: every rank computes the same loss on the
same gathered embeddings, so its gradient is already the same everywhere.

The best epoch (``encoder-best.pth``, ``best.json``) is the one with the
lowest validation loss (``best = "val_loss"``, the original code's choice) or
the highest zero-shot top-1 (``best = "val_top1"``); a later epoch must be
strictly better, so on a tie the earlier epoch stays (:func:`best_epoch`).

A resumed run may be extended: more ``epochs`` or a larger ``max_steps``
continue it; a cosine schedule is then laid out over the new length. With
nothing left to do, :func:`train` touches nothing and says why
(:attr:`TrainResult.nothing_left`).

The rest lives apart: the checkpoint and RNG states of an exact resume
(:mod:`~soundguide.training.resume`), the optimizer and schedule
(:mod:`~soundguide.training.optim`), the run log and report
(:mod:`~soundguide.training.runlog`) and the settings
(:mod:`~soundguide.training.config`).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from soundguide.core.checkpoints import load_checkpoint
from soundguide.core.errors import (
    CheckpointError,
    ConfigError,
    DatasetError,
    OutputError,
    SoundguideError,
)
from soundguide.core.files import atomic_write_text
from soundguide.evaluation.metrics import topk_hits
from soundguide.training.batchnorm import BatchNormStats
from soundguide.training.config import BEST_METRICS, TrainConfig
from soundguide.training.data import ClipDataset, GlobalBatchSampler, ShardSampler, SpecAugment
from soundguide.training.distributed import (
    Job,
    barrier,
    broadcast_object,
    gather,
    gather_objects,
    gather_ragged,
    init_distributed,
    shutdown,
)
from soundguide.training.loss import ContrastiveLoss
from soundguide.training.models import build_encoder, check_encoder, export_encoder, unwrap
from soundguide.training.optim import (
    build_optimizer,
    build_scheduler,
    schedule_per_epoch,
    stretch_schedule,
)
from soundguide.training.resume import (
    LAST_CHECKPOINT,
    read_checkpoint,
    rng_state,
    seed_everything,
    set_rng_state,
    store_fingerprint,
    write_checkpoint,
)
from soundguide.training.runlog import RunLog, clip_report, progress_bar, write_run_report
from soundguide.training.store import CuratedStore
from soundguide.training.text import TextTargets

BEST_ENCODER = "encoder-best.pth"
LAST_ENCODER = "encoder-last.pth"
VAL_SPLITS = frozenset({"test", "val", "valid", "validation", "eval", "dev"})


class TrainingError(SoundguideError):
    """A training run failed (a non-finite loss); exit code 1."""

    exit_code = 1


@dataclass
class TrainResult:
    """What a run did: its folder, how far it got, per-epoch records, the best epoch.

    ``nothing_left``: set when a resumed run had nothing left to do (it reached
    its epochs or ``max_steps``): one line saying what to pass to go on; the
    run folder was not touched. ``notes``: what a resume changed (a stretched
    schedule). ``clip``: the CLIP report of ``run.json``
    (:func:`~soundguide.training.runlog.clip_report`).
    """

    out: Path
    epochs_done: int
    global_step: int
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    stopped_early: bool = False
    nothing_left: str | None = None
    notes: list[str] = field(default_factory=list)
    clip: dict[str, Any] | None = None

    @property
    def best_encoder(self) -> Path:
        return self.out / BEST_ENCODER

    @property
    def last_encoder(self) -> Path:
        return self.out / LAST_ENCODER


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    encoder: nn.Module | None = None,
    text_encoder: Any | None = None,
    trust_checkpoint: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train (or, with ``resume``, continue) the run ``config`` describes.

    ``resume`` continues from ``OUT/checkpoints/last.pt`` when it exists and
    starts the run otherwise (so a requeued job can always pass it); without
    ``resume`` an existing run is an :class:`OutputError`.

    ``encoder``: any ``nn.Module`` (B, 1, 128, 512) -> (B, D) to train instead of
    ``config.arch`` (pass it again to resume). ``text_encoder``: an already
    loaded :class:`~soundguide.encoders.clip.CLIPEncoder` for ``config.clip``.
    ``trust_checkpoint`` allows CLIP and ``config.init`` files that unpickle
    arbitrary objects. Under ``torchrun`` every rank calls this with the same arguments.
    """
    job = init_distributed(config.device)
    try:
        trainer = Trainer(
            config, job, encoder=encoder, text_encoder=text_encoder, trust=trust_checkpoint
        )
        return trainer.run(resume=resume, progress=progress)
    finally:
        shutdown(job)


class Trainer:
    """One training run in one process (rank); :func:`train` is the entry point."""

    def __init__(
        self,
        config: TrainConfig,
        job: Job,
        *,
        encoder: nn.Module | None = None,
        text_encoder: Any | None = None,
        trust: bool = False,
    ) -> None:
        self.config = c = config
        self.job = job
        self.device = job.device
        self.out = Path(c.out)
        self.custom_encoder = encoder is not None
        seed_everything(c.seed)

        self.store = CuratedStore(c.store)
        self.store_fingerprint = store_fingerprint(self.store)
        self.train_indices, self.val_indices = split_items(self.store, c.val_fraction, c.seed)
        if len(self.train_indices) < c.batch_size:
            raise DatasetError(
                f"{self.store.path} has {len(self.train_indices)} training clips, fewer than one "
                f"global batch of {c.batch_size}",
                hint="lower --batch-size",
            )
        self.labels = self.store.labels
        self.captions = sorted({it.caption for it in self.store.items if it.caption})
        label_of = {label: i for i, label in enumerate(self.labels)}
        caption_of = {text: i for i, text in enumerate(self.captions)}
        self.label_ids = [label_of.get(it.label, -1) if it.label else -1 for it in self.store.items]
        self.caption_ids = [caption_of[it.caption] if it.caption else -1 for it in self.store.items]

        if text_encoder is None:
            from soundguide.encoders.clip import CLIPEncoder, load_clip

            text_encoder = CLIPEncoder(load_clip(c.clip, device=self.device, trust=trust))
        self.text = TextTargets(
            text_encoder, self.labels, self.captions, c.templates, device=self.device
        )
        self.embed_dim = self.text.dim
        self.use_images = self.store.has_images and c.image_weight > 0
        if self.use_images:
            from soundguide.training.curation import clip_identity

            if self.store.image_encoder != clip_identity(c.clip):
                raise ConfigError(
                    f"the store's video frames were embedded with CLIP {self.store.image_encoder}, "
                    f"but training uses {c.clip}",
                    hint="curate with the same --clip, or pass --image-weight 0",
                )

        torch.manual_seed(c.seed)
        if encoder is None:
            encoder = build_encoder(c.arch, self.embed_dim)
            if c.init is not None:
                _load_initial_weights(encoder, c.init, trust)
        encoder = encoder.to(self.device)
        if self.custom_encoder:
            check_encoder(encoder, self.embed_dim, self.device)
        if c.sync_bn and job.distributed:
            if self.device.type != "cuda":
                raise ConfigError("--sync-bn needs CUDA (SyncBatchNorm does not run on the CPU)")
            encoder = nn.SyncBatchNorm.convert_sync_batchnorm(encoder)
        self.encoder = encoder
        self.loss_fn = ContrastiveLoss(
            learnable_scale=c.learnable_scale,
            logit_scale=c.logit_scale,
            text_weight=c.text_weight,
            augment_weight=c.augment_weight,
            image_weight=c.image_weight if self.use_images else 0.0,
        ).to(self.device)
        self.model: nn.Module = encoder
        if job.distributed:
            from torch.nn.parallel import DistributedDataParallel

            # Buffers are not broadcast from rank 0 before each forward: batch-norm
            # running statistics are averaged over ranks after each step instead.
            sync = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
            self.model = DistributedDataParallel(
                encoder,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                **({"forward_sync_buffers": False} if sync else {"broadcast_buffers": False}),
            )
        self.optimizer = build_optimizer(c, encoder, self.loss_fn)
        self.sampler = GlobalBatchSampler(
            len(self.train_indices),
            c.batch_size,
            rank=job.rank,
            world_size=job.world_size,
            micro_batches=c.accumulate,
            seed=c.seed,
        )
        self.steps_per_epoch = self.sampler.steps_per_epoch
        self.total_steps = c.epochs * self.steps_per_epoch
        self.scheduler = build_scheduler(c, self.optimizer, self.total_steps)
        self.schedule_per_epoch = schedule_per_epoch(c)
        precision = c.precision
        if precision == "auto":
            precision = "fp16" if self.device.type == "cuda" else "fp32"
        self.amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=precision == "fp16")

        augment = SpecAugment(c.freq_mask, c.time_mask, c.num_masks)
        common = {"num_templates": len(c.templates), "augment": augment, "seed": c.seed}
        self.train_set = ClipDataset(
            self.store, self.train_indices, self.label_ids, self.caption_ids, train=True, **common
        )
        self.val_set = ClipDataset(
            self.store, self.val_indices, self.label_ids, self.caption_ids, train=False, **common
        )
        self.val_sampler = ShardSampler(
            len(self.val_indices),
            self.sampler.micro_batch_size,
            rank=job.rank,
            world_size=job.world_size,
        )
        self.bn = BatchNormStats(encoder)
        self.clip = self._clip_report(trust)

        self.epoch = 0
        self.step_in_epoch = 0
        self.global_step = 0
        self.epoch_loss = [0.0, 0]
        self.best: dict[str, Any] | None = None
        self.history: list[dict[str, Any]] = []
        self.log: RunLog | None = None
        self.resumed: dict[str, Any] | None = None
        self.notes: list[str] = []

    def _clip_report(self, trust: bool) -> dict[str, Any]:
        """Rank 0's :func:`clip_report` (one hash of the file), on every rank."""
        report: Any = None
        if self.job.is_main:
            try:
                report = clip_report(self.config.clip, trust=trust)
            except SoundguideError as exc:
                report = exc
        report = broadcast_object(report, self.job)
        if isinstance(report, SoundguideError):
            raise report
        return report

    # -- the run ----------------------------------------------------------------------

    def run(self, *, resume: bool = False, progress: bool = True) -> TrainResult:
        c, job = self.config, self.job
        decision = broadcast_object(self._start_decision(resume) if job.is_main else None, job)
        if decision[0] == "error":
            raise OutputError(decision[1], hint=decision[2])
        if decision[0] == "resume":
            # rank 0 reads the checkpoint; every rank gets it (no shared disk needed)
            state: Any = None
            if job.is_main:
                try:
                    state = read_checkpoint(self.out / LAST_CHECKPOINT)
                except SoundguideError as exc:
                    state = exc
            state = broadcast_object(state, job)
            if isinstance(state, SoundguideError):
                raise state
            self._restore(state)
            left = self._nothing_left()
            if left is not None:
                return self._result(nothing_left=left)
        if job.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out / "config.json", json.dumps(c.to_dict(), indent=2) + "\n")
            write_run_report(self.out, {"clip": self.clip})
            self.log = RunLog(self.out, truncate_after=self.global_step)
            if self.resumed is not None:
                self.log.write(self._resume_record())
        barrier(job)
        loader = self._loader(self.train_set, self.sampler, persistent=True)
        bar = progress_bar(self.total_steps, self.global_step, progress and job.is_main)
        stopped = c.max_steps is not None and self.global_step >= c.max_steps
        try:
            while self.epoch < c.epochs and not stopped:
                self.sampler.set_position(self.epoch, self.step_in_epoch)
                batches = iter(loader)
                while self.step_in_epoch < self.steps_per_epoch:
                    self._train_step(batches)
                    bar.update(1)
                    last_of_epoch = self.step_in_epoch == self.steps_per_epoch
                    at_limit = c.max_steps is not None and self.global_step >= c.max_steps
                    if not last_of_epoch and (
                        at_limit
                        or (c.checkpoint_every and self.global_step % c.checkpoint_every == 0)
                    ):
                        self._save()
                    if at_limit and not last_of_epoch:
                        stopped = True
                        break
                if not stopped:
                    self._end_epoch()
                    stopped = c.max_steps is not None and self.global_step >= c.max_steps
            if stopped and job.is_main:
                export_encoder(self.encoder, self.out / LAST_ENCODER)
        finally:
            bar.close()
            if self.log is not None:
                self.log.close()
        return self._result()

    def _result(self, nothing_left: str | None = None) -> TrainResult:
        return TrainResult(
            out=self.out,
            epochs_done=self.epoch,
            global_step=self.global_step,
            history=self.history,
            best=self.best,
            stopped_early=self.epoch < self.config.epochs,
            nothing_left=nothing_left,
            notes=list(self.notes),
            clip=self.clip,
        )

    def _nothing_left(self) -> str | None:
        """Why a resumed run has no step left to take (one line), or None."""
        c, step = self.config, self.global_step
        if self.epoch >= c.epochs:
            return (
                f"nothing left to do: the run finished its {c.epochs} epochs ({step} steps); "
                f"pass --epochs E > {c.epochs} to train on"
            )
        if c.max_steps is not None and step >= c.max_steps:
            where = (
                f"the run reached max_steps {step}"
                if step == c.max_steps
                else f"the run is at step {step}, past max_steps {c.max_steps}"
            )
            return f"nothing left to do: {where}; pass --max-steps M > {step} or more --epochs"
        return None

    def _resume_record(self) -> dict[str, Any]:
        """The log's record of a resume: where, and the settings it changed."""
        old, new = self.resumed or {}, self.config.to_dict()
        changed = {k: [old.get(k), new[k]] for k in ("epochs", "max_steps") if old.get(k) != new[k]}
        return {
            "event": "resume",
            "epoch": self.epoch,
            "step": self.global_step,
            "changed": changed,
        }

    def _start_decision(self, resume: bool) -> tuple[str, str | None, str | None]:
        """("fresh" | "resume" | "error", message, hint), decided on rank 0."""
        if (self.out / LAST_CHECKPOINT).is_file():
            if resume:
                return ("resume", None, None)
            return (
                "error",
                f"{self.out} already holds a training run ({LAST_CHECKPOINT})",
                "pass --resume to continue it, or choose another output folder",
            )
        if self.out.is_dir() and any(self.out.iterdir()):
            if (self.out / "config.json").is_file() and resume:
                return ("fresh", None, None)  # a run that stopped before its first checkpoint
            return (
                "error",
                f"output folder is not empty and holds no resumable training run: {self.out}",
                "choose an empty or new folder"
                + ("" if resume else ", or pass --resume to restart a run that never checkpointed"),
            )
        return ("fresh", None, None)

    def _loader(
        self, dataset: ClipDataset, sampler: Any, *, persistent: bool = False
    ) -> DataLoader:
        workers = self.config.loader_workers
        return DataLoader(
            dataset,
            batch_sampler=sampler,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=persistent and workers > 0,
        )

    # -- one optimizer step -----------------------------------------------------------

    def _train_step(self, batches: Iterator[dict[str, Any]]) -> None:
        c = self.config
        started = time.perf_counter()
        micro = [self._to_device(next(batches)) for _ in range(c.accumulate)]
        data_seconds = time.perf_counter() - started
        group = self.optimizer.param_groups[0]
        lr, momentum = group["lr"], group.get("momentum")  # what this step uses
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        self.bn.begin()
        if c.accumulate == 1:
            loss, terms = self._step_direct(micro[0])
        else:
            loss, terms = self._step_cached(micro)
        self.bn.finish(self.job)
        if not math.isfinite(float(loss)):
            raise TrainingError(
                f"the loss became non-finite ({float(loss)}) at step {self.global_step + 1}; "
                f"the last good checkpoint is {self.out / LAST_CHECKPOINT}"
            )
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if not self.schedule_per_epoch:
            self.scheduler.step()
        self.global_step += 1
        self.step_in_epoch += 1
        self.epoch_loss[0] += float(loss)
        self.epoch_loss[1] += 1
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - started
        if self.log is not None and (
            self.global_step % c.log_every == 0 or self.step_in_epoch == self.steps_per_epoch
        ):
            record = {
                "event": "step",
                "epoch": self.epoch,
                "step": self.global_step,
                "loss": float(loss),
                **{f"loss_{k}": float(v) for k, v in terms.items()},
                "lr": lr,
                **({"momentum": momentum} if c.optimizer == "sgd" else {}),
                "logit_scale": float(self.loss_fn.scale.detach()),
                "data_seconds": data_seconds,
                "step_seconds": seconds,
                "clips_per_second": c.batch_size / seconds,
            }
            self.log.write(record, scalars=("loss", "lr", "logit_scale", "clips_per_second"))

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def _encode(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Both views in one forward. Output: audio, augmented (b, D) float32."""
        inputs = torch.cat([batch["audio"], batch["augmented"]])
        autocast = (
            torch.autocast(self.device.type, dtype=self.amp_dtype)
            if self.amp_dtype is not None
            else contextlib.nullcontext()
        )
        with autocast:
            embeddings = model(inputs)
        audio, augmented = embeddings.float().chunk(2)
        return audio, augmented

    def _targets(self, batch: dict[str, Any]) -> dict[str, torch.Tensor | None]:
        text = self.text.lookup(batch["label"], batch["caption"], batch["template"])
        image = batch.get("image") if self.use_images else None
        has_image = batch.get("has_image") if self.use_images else None
        return {"text": text, "image": image, "has_image": has_image}

    def _global_targets(self, batches: list[dict[str, Any]]) -> dict[str, torch.Tensor | None]:
        parts = [self._targets(b) for b in batches]
        out: dict[str, torch.Tensor | None] = {}
        for key in ("text", "image", "has_image"):
            if parts[0][key] is None:
                out[key] = None
            else:
                out[key] = gather(torch.cat([p[key] for p in parts]), self.job)  # type: ignore[misc]
        return out

    def _step_direct(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        audio, augmented = self._encode(self.model, batch)
        targets = self._global_targets([batch])
        loss, terms = self.loss_fn(
            gather(audio, self.job, grad=True),
            gather(augmented, self.job, grad=True),
            targets["text"],
            targets["image"],
            targets["has_image"],
        )
        self.scaler.scale(loss).backward()
        return loss.detach(), {k: v.detach() for k, v in terms.items()}

    def _step_cached(
        self, batches: list[dict[str, Any]]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        module = unwrap(self.model)
        with torch.no_grad():
            views = [self._encode(module, b) for b in batches]
        self.bn.reset()
        audio = gather(torch.cat([a for a, _ in views]), self.job).requires_grad_()
        augmented = gather(torch.cat([g for _, g in views]), self.job).requires_grad_()
        targets = self._global_targets(batches)
        loss, terms = self.loss_fn(
            audio, augmented, targets["text"], targets["image"], targets["has_image"]
        )
        self.scaler.scale(loss).backward()
        local = audio.shape[0] // self.job.world_size
        start = self.job.rank * local
        micro = local // len(batches)
        # DDP averages gradients over ranks; the cached ones are already global sums.
        factor = float(self.job.world_size)
        for m, batch in enumerate(batches):
            rows = slice(start + m * micro, start + (m + 1) * micro)
            last = m == len(batches) - 1
            sync = contextlib.nullcontext()
            if self.job.distributed and not last:
                sync = self.model.no_sync()  # type: ignore[operator]
            with sync:
                a, g = self._encode(self.model, batch)
                surrogate = (a * audio.grad[rows]).sum() + (g * augmented.grad[rows]).sum()
                (surrogate * factor).backward()
            self.bn.accumulate()
        return loss.detach(), {k: v.detach() for k, v in terms.items()}

    # -- epochs, validation, checkpoints ----------------------------------------------

    def _end_epoch(self) -> None:
        train_loss = self.epoch_loss[0] / max(1, self.epoch_loss[1])
        if self.schedule_per_epoch:
            self.scheduler.step()  # after the epoch's batches, as the original code
        metrics = self.validate()
        record = {"event": "epoch", "epoch": self.epoch, "step": self.global_step}
        record["train_loss"] = train_loss
        record.update(metrics)
        self.history.append(record)
        self.epoch += 1
        self.step_in_epoch = 0
        self.epoch_loss = [0.0, 0]
        improved = self._update_best(record)
        self._save()
        if self.job.is_main:
            export_encoder(self.encoder, self.out / LAST_ENCODER)
            if improved:
                export_encoder(self.encoder, self.out / BEST_ENCODER)
                atomic_write_text(self.out / "best.json", json.dumps(self.best, indent=2) + "\n")
            if self.log is not None:
                self.log.write(
                    record, scalars=tuple(k for k in record if k.startswith(("val_", "train_")))
                )
        barrier(self.job)

    def _update_best(self, record: dict[str, Any]) -> bool:
        """Whether the epoch just ended is the best so far (then ``self.best`` describes it)."""
        best = best_epoch(self.history, self.config.best)
        if best is None or best["epoch"] != record["epoch"]:
            return False
        self.best = best
        return True

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Validation loss and zero-shot top-1 on the held-out clips (empty dict without any).

        Each rank encodes its shard of the held-out clips; the embeddings are
        gathered and every rank computes the same metrics. The loss is averaged
        over chunks of one global batch, the same negatives as in training.
        """
        if not self.val_indices:
            return {}
        module = unwrap(self.model)
        module.eval()
        rows: dict[str, list[torch.Tensor]] = {k: [] for k in ("a", "g", "t", "y", "i", "h")}
        for batch in self._loader(self.val_set, self.val_sampler):
            batch = self._to_device(batch)
            audio, augmented = self._encode(module, batch)
            targets = self._targets(batch)
            rows["a"].append(audio)
            rows["g"].append(augmented)
            rows["t"].append(targets["text"])  # type: ignore[arg-type]
            rows["y"].append(batch["label"].float())
            if self.use_images:
                rows["i"].append(targets["image"])  # type: ignore[arg-type]
                rows["h"].append(targets["has_image"].float())  # type: ignore[union-attr]
        module.train()
        # a rank whose shard is empty still takes part in the gathers
        widths = {"a": self.embed_dim, "g": self.embed_dim, "t": self.embed_dim}
        widths["i"] = self.store.image_dim or 0
        merged: dict[str, torch.Tensor | None] = {}
        for key, parts in rows.items():
            if key in ("i", "h") and not self.use_images:
                merged[key] = None
                continue
            shape = (0, widths[key]) if key in widths else (0,)
            local = torch.cat(parts) if parts else torch.zeros(shape, device=self.device)
            merged[key] = gather_ragged(local, self.job, self.val_sampler.shard_size)
        return self._metrics(merged)

    def _metrics(self, m: dict[str, torch.Tensor | None]) -> dict[str, float]:
        audio, augmented, text, labels = m["a"], m["g"], m["t"], m["y"]
        assert (
            audio is not None and augmented is not None and text is not None and labels is not None
        )
        out: dict[str, float] = {}
        size = self.config.batch_size
        total, count = 0.0, 0
        for i in range(0, audio.shape[0], size):
            chunk = slice(i, i + size)
            n = audio[chunk].shape[0]
            if n < 2:
                continue
            image = m["i"][chunk] if m["i"] is not None else None
            has_image = m["h"][chunk].bool() if m["h"] is not None else None
            loss, _ = self.loss_fn(audio[chunk], augmented[chunk], text[chunk], image, has_image)
            total += float(loss) * n
            count += n
        if count:
            out["val_loss"] = total / count
        out.update(label_accuracy(audio, labels, self.text.class_embeddings))
        return out

    def _save(self) -> None:
        rng = gather_objects(rng_state(), self.job)
        if self.job.is_main:
            state = {
                "config": self.config.to_dict(),
                "model": {k: v.detach().cpu() for k, v in self.encoder.state_dict().items()},
                "loss": {k: v.detach().cpu() for k, v in self.loss_fn.state_dict().items()},
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": rng,
                "position": {
                    "epoch": self.epoch,
                    "step_in_epoch": self.step_in_epoch,
                    "global_step": self.global_step,
                },
                "epoch_loss": list(self.epoch_loss),
                "best": self.best,
                "history": self.history,
                "world_size": self.job.world_size,
                "store_fingerprint": self.store_fingerprint,
                "clip_sha256": self.clip["sha256"],
            }
            write_checkpoint(self.out / LAST_CHECKPOINT, state)
        barrier(self.job)

    def _restore(self, state: dict[str, Any]) -> None:
        stored = TrainConfig.from_dict(state["config"])
        changed = stored.differences(self.config)
        if changed:
            raise ConfigError(
                f"cannot resume {self.out} with different settings: {', '.join(changed)}",
                hint="resume with the run's own settings (see config.json), or start a new run",
            )
        if state.get("store_fingerprint") != self.store_fingerprint:
            raise ConfigError(
                f"cannot resume {self.out}: the store {self.store.path} holds other clips or labels "
                "than the one the run was trained on"
            )
        trained_on, now = state.get("clip_sha256"), self.clip["sha256"]
        if trained_on is not None and now is not None and trained_on != now:
            raise ConfigError(  # the same path, another file
                f"cannot resume {self.out}: the CLIP {self.config.clip} (sha256 {now[:12]}...) "
                f"is not the one the run was trained against (sha256 {trained_on[:12]}...)"
            )
        try:
            self.encoder.load_state_dict(state["model"])
            self.loss_fn.load_state_dict(state["loss"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
        except (RuntimeError, KeyError, ValueError) as exc:
            raise CheckpointError(
                f"cannot resume from {self.out / LAST_CHECKPOINT}: {str(exc).splitlines()[0]}"
            ) from None
        position = state["position"]
        self.epoch = int(position["epoch"])
        self.step_in_epoch = int(position["step_in_epoch"])
        self.global_step = int(position["global_step"])
        begun = self.epoch + (1 if self.step_in_epoch else 0)
        if self.config.epochs < begun:
            done = (
                f"is partway through epoch {begun}"
                if self.step_in_epoch
                else f"has done {self.epoch} epochs"
            )
            raise ConfigError(
                f"cannot resume {self.out} with {self.config.epochs} epochs: the run {done}",
                hint=f"pass --epochs {begun} or more",
            )
        self.resumed = stored.to_dict()
        if stored.epochs != self.config.epochs:
            previous = stretch_schedule(self.scheduler, self.total_steps)
            if self.config.schedule == "cosine" and previous not in (None, self.total_steps):
                self.notes.append(
                    f"the cosine schedule now ends at step {self.total_steps} (was {previous}); "
                    f"step {self.global_step + 1} takes lr "
                    f"{self.optimizer.param_groups[0]['lr']:.3g}"
                )
        self.epoch_loss = [float(state["epoch_loss"][0]), int(state["epoch_loss"][1])]
        self.best = state["best"]
        self.history = list(state["history"])
        rngs = state["rng"]
        set_rng_state(rngs[self.job.rank] if len(rngs) == self.job.world_size else rngs[0])


# -- building blocks --------------------------------------------------------------------


def split_items(store: CuratedStore, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Training and held-out item indices.

    Items whose split is test/val/validation/eval/dev are held out. When no
    item has such a split, ``val_fraction`` of each label's items (at least
    one for labels with two or more) is held out, chosen with ``seed``.
    """
    held = [i for i, it in enumerate(store.items) if (it.split or "") in VAL_SPLITS]
    if held:
        held_set = set(held)
        return [i for i in range(len(store)) if i not in held_set], held
    if val_fraction <= 0:
        return list(range(len(store))), []
    groups: dict[str, list[int]] = {}
    for i, item in enumerate(store.items):
        groups.setdefault(item.label or "", []).append(i)
    rng = np.random.default_rng([seed, 7])
    val: list[int] = []
    for key in sorted(groups):
        members = groups[key]
        count = int(round(val_fraction * len(members)))
        if len(members) >= 2:
            count = max(1, count)
        count = min(count, len(members) - 1)
        val.extend(int(members[j]) for j in rng.permutation(len(members))[:count])
    val_set = set(val)
    return [i for i in range(len(store)) if i not in val_set], sorted(val)


def best_epoch(history: list[dict[str, Any]], metric: str = "val_loss") -> dict[str, Any] | None:
    """The best of the epoch records in ``history`` by ``metric``, or None.

    ``metric`` is ``"val_loss"`` (lowest wins) or ``"val_top1"`` (highest
    wins). When the latest record lacks it (no held-out or no labelled clips),
    the other one, then ``"train_loss"``, is used. A later epoch must be
    strictly better: on equal values the earlier epoch stays best. Non-finite
    values are never best. Output: ``{"metric", "value", "epoch", "step"}``.
    """
    if not history:
        return None
    order = [metric, *(m for m in BEST_METRICS if m != metric)]
    name = next((m for m in order if m in history[-1]), None)
    if name is None:
        return None
    lower = BEST_METRICS[name] == "min"
    best: dict[str, Any] | None = None
    for record in history:
        value = record.get(name)
        if value is None or not math.isfinite(value):
            continue
        if best is None or (value < best["value"] if lower else value > best["value"]):
            best = {
                "metric": name,
                "value": value,
                "epoch": record["epoch"],
                "step": record["step"],
            }
    return best


def label_accuracy(
    audio: torch.Tensor, labels: torch.Tensor, class_embeddings: torch.Tensor
) -> dict[str, float]:
    """Zero-shot top-1 (and top-5 with five labels or more) of the labelled clips.

    Input: audio (N, D) embeddings, labels (N,) class indices (-1: unlabelled),
    class_embeddings (K, D) normalized. Output: ``{"val_top1": ..., "val_top5": ...}``
    (fractions), empty without labelled clips or with fewer than two labels. Hits
    are :func:`~soundguide.evaluation.metrics.topk_hits`', so ties go to the lower
    class index, as in the evaluation reports.
    """
    out: dict[str, float] = {}
    labelled = labels >= 0
    num_labels = class_embeddings.shape[0]
    if not bool(labelled.any()) or num_labels < 2:
        return out
    scores = torch.nn.functional.normalize(audio[labelled], dim=-1) @ class_embeddings.T
    truth = labels[labelled].long()
    out["val_top1"] = float(topk_hits(scores, truth, 1).float().mean())
    if num_labels >= 5:
        out["val_top5"] = float(topk_hits(scores, truth, 5).float().mean())
    return out


def _load_initial_weights(encoder: nn.Module, path: str, trust: bool) -> None:
    from soundguide.encoders.soundclip import SoundCLIPEncoder, load_soundclip, soundclip_state_dict

    if isinstance(encoder, SoundCLIPEncoder):
        encoder.load_state_dict(load_soundclip(path, trust=trust).state_dict())
        return
    state = soundclip_state_dict(load_checkpoint(path, trust=trust), path)
    try:
        encoder.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{path} does not fit the encoder: {str(exc).splitlines()[0]}"
        ) from None
