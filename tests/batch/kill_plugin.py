"""A toy guidance for the batch tests (``-p tests.batch.kill_plugin``, with
``-p tests.toy_plugins``): it logs each row's ``tag`` to a file when its target is
computed, so a test counts what each process did, and SIGKILLs its own process
at the row tagged ``kill_tag`` unless ``marker`` exists (it creates it first).
Also a regularizer whose loss is NaN for the items that start far from 0 (one
bad item in a batch)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Literal

import torch

import soundguide
from soundguide import Regularizer, RegularizerConfig
from tests.toy_plugins import ToyGuidance


class KillGuidance(ToyGuidance):
    class Config(ToyGuidance.Config):
        type: Literal["kill-target"] = "kill-target"
        tag: str = ""
        log: str | None = None
        kill_tag: str | None = None
        marker: str | None = None

    def target(self, encoder):
        c = self.config
        if c.log is not None:
            with open(c.log, "a", encoding="utf-8") as fh:
                fh.write(f"{c.tag} {os.getpid()}\n")
        if c.tag == c.kill_tag and c.marker is not None and not Path(c.marker).exists():
            Path(c.marker).write_text("killed\n")
            os.kill(os.getpid(), signal.SIGKILL)
        return super().target(encoder)


class NanFarAway(Regularizer):
    """0 for items whose start latent is within ``limit`` of 0, NaN for the others."""

    class Config(RegularizerConfig):
        type: Literal["nan-far-away"] = "nan-far-away"
        limit: float = 10.0

    def loss(self, w, w0, image, image0):
        far = w0.flatten(1).abs().amax(dim=1) > self.config.limit
        zero = torch.zeros(w.shape[0], device=w.device)
        return torch.where(far, torch.full_like(zero, float("nan")), zero + 0 * w.sum())


@soundguide.hookimpl
def register_guidances(registry):
    registry.add(KillGuidance)


@soundguide.hookimpl
def register_regularizers(registry):
    registry.add(NanFarAway)
