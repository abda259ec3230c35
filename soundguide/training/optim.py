"""The optimizer and the learning-rate schedule a :class:`TrainConfig` describes.

Parameter groups: weight decay on matrices (``ndim >= 2``) only, or on every
parameter with ``decay_all`` (the original SGD); the loss's learnable
temperature never decays. Schedules: ``cyclic`` is torch's ``CyclicLR`` (the
original code's), ``cosine`` and ``constant`` a linear warm-up then cosine down
to ``min_lr`` or constant (:class:`LRFactor` under ``LambdaLR``).

A schedule advances after every optimizer step, except a cyclic one with
``cycle_epochs``, which advances once per epoch (:func:`schedule_per_epoch`), as
the original code's did: ``CyclicLR(base_lr=0.001, max_lr=0.1,
step_size_up=5, mode="triangular")`` with torch's default momentum cycling
(0.9 at the base rate, 0.8 at the peak), ``scheduler.step()`` after each
epoch's batches.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from soundguide.training.config import TrainConfig


def build_optimizer(
    config: TrainConfig, encoder: nn.Module, loss_fn: nn.Module
) -> torch.optim.Optimizer:
    """SGD (with ``momentum``) or AdamW over the encoder's and the loss's trainable parameters."""
    decay, no_decay = [], []
    for _, param in encoder.named_parameters():
        if not param.requires_grad:
            continue
        (decay if config.decay_all or param.ndim >= 2 else no_decay).append(param)
    no_decay.extend(p for p in loss_fn.parameters() if p.requires_grad)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    return torch.optim.AdamW(groups, lr=config.lr)


def schedule_per_epoch(config: TrainConfig) -> bool:
    """Whether the schedule advances once per epoch (a cyclic one with ``cycle_epochs``)."""
    return config.schedule == "cyclic" and config.cycle_epochs is not None


def build_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer, total_steps: int) -> Any:
    """The schedule over ``total_steps`` optimizer steps.

    Stepped after every optimizer step, or after every epoch when
    :func:`schedule_per_epoch` says so (``step_size_up`` then counts epochs).
    """
    sched = torch.optim.lr_scheduler
    if config.schedule == "cyclic":
        sgd = config.optimizer == "sgd"
        return sched.CyclicLR(
            optimizer,
            base_lr=config.min_lr,
            max_lr=config.lr,
            step_size_up=config.cycle_epochs or config.cycle_steps,
            mode="triangular",
            cycle_momentum=sgd and config.momentum > 0,
            base_momentum=min(0.8, config.momentum),
            max_momentum=config.momentum if sgd and config.momentum > 0 else 0.9,
        )
    return sched.LambdaLR(optimizer, LRFactor(config, total_steps))


def stretch_schedule(scheduler: Any, total_steps: int) -> int | None:
    """Lay a cosine or constant schedule out over ``total_steps`` (a resumed run with more epochs).

    The learning rate of the next step follows the new length at once. Returns
    the previous length, or None for a schedule that has none (cyclic).
    """
    if not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        return None
    previous = None
    for fn in scheduler.lr_lambdas:  # one factor, shared by the parameter groups
        if isinstance(fn, LRFactor):
            previous = fn.total if previous is None else previous
            fn.total = max(1, int(total_steps))
    for group, base, fn in zip(
        scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True
    ):
        group["lr"] = base * fn(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]
    return previous


class LRFactor:
    """Linear warm-up, then constant or cosine down to ``min_lr`` (a picklable callable).

    ``LambdaLR`` saves its ``__dict__`` in the scheduler's state dict: the
    attribute names are part of the checkpoint format.
    """

    def __init__(self, config: TrainConfig, total_steps: int) -> None:
        self.warmup = int(config.warmup_steps)
        self.total = max(1, int(total_steps))
        self.floor = config.min_lr / config.lr if config.lr > 0 else 0.0
        self.cosine = config.schedule == "cosine"

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        if not self.cosine:
            return 1.0
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * progress))
