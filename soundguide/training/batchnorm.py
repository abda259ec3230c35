"""Batch-norm running statistics of a step that is split into chunks and ranks.

Each forward of a training step sees one micro-batch, a rank's chunk, so with
the same global batch a ``W``-process run and a 1-process run with ``K = W``
accumulation steps compute the same statistics and the same loss (``sync_bn``
makes statistics global on CUDA instead). The running statistics after a step
are the mean of the chunks' updates, averaged across ranks, so they agree as well.
"""

from __future__ import annotations

import torch
from torch import nn

from soundguide.training.distributed import Job, average_


class BatchNormStats:
    """Running statistics of batch norm as the mean of each chunk's update.

    ``begin`` remembers the statistics before a step, ``reset`` restores them
    (after a forward whose update must not count), ``accumulate`` adds the
    current ones to a sum and restores, ``finish`` writes the mean over chunks
    and over ranks, and counts one batch.
    """

    def __init__(self, model: nn.Module) -> None:
        self.layers = [
            m
            for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
        ]
        self._start: list[tuple[torch.Tensor, ...]] = []
        self._sum: list[list[torch.Tensor]] = []
        self._count = 0

    def begin(self) -> None:
        self._start = [
            (m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
            for m in self.layers
        ]
        self._sum = [
            [torch.zeros_like(m.running_mean), torch.zeros_like(m.running_var)] for m in self.layers
        ]
        self._count = 0

    def reset(self) -> None:
        for m, (mean, var, count) in zip(self.layers, self._start, strict=True):
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(count)

    def accumulate(self) -> None:
        for m, sums in zip(self.layers, self._sum, strict=True):
            sums[0] += m.running_mean
            sums[1] += m.running_var
        self._count += 1
        self.reset()

    def finish(self, job: Job) -> None:
        if not self.layers:
            return
        if self._count:
            for m, sums in zip(self.layers, self._sum, strict=True):
                m.running_mean.copy_(sums[0] / self._count)
                m.running_var.copy_(sums[1] / self._count)
        for m, (_, _, count) in zip(self.layers, self._start, strict=True):
            m.num_batches_tracked.copy_(count + 1)
        average_([t for m in self.layers for t in (m.running_mean, m.running_var)], job)
