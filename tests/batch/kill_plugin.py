"""A toy guidance for the batch tests (``-p tests.batch.kill_plugin``, with
``-p tests.toy_plugins``): it logs each row's ``tag`` to a file when its target is
computed, so a test counts what each process did, and SIGKILLs its own process
at the row tagged ``kill_tag`` unless ``marker`` exists (it creates it first)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Literal

import soundguide
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


@soundguide.hookimpl
def register_guidances(registry):
    registry.add(KillGuidance)
