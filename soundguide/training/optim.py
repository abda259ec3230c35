"""The optimizer and the learning-rate schedule a :class:`TrainConfig` describes.

Parameter groups: weight decay on matrices (``ndim >= 2``) only, or on every
parameter with ``decay_all`` (the original SGD); the loss's learnable
temperature never decays. Schedules: ``cyclic`` is torch's ``CyclicLR`` (the
original code's), ``cosine`` and ``constant`` a linear warm-up then cosine down
to ``min_lr`` or constant (:class:`LRFactor` under ``LambdaLR``).
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


def build_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer, total_steps: int) -> Any:
    """The schedule, stepped once per optimizer step over ``total_steps``."""
    sched = torch.optim.lr_scheduler
    if config.schedule == "cyclic":
        sgd = config.optimizer == "sgd"
        return sched.CyclicLR(
            optimizer,
            base_lr=config.min_lr,
            max_lr=config.lr,
            step_size_up=config.cycle_steps,
            cycle_momentum=sgd and config.momentum > 0,
            base_momentum=min(0.8, config.momentum),
            max_momentum=config.momentum if sgd and config.momentum > 0 else 0.9,
        )
    return sched.LambdaLR(optimizer, LRFactor(config, total_steps))


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
