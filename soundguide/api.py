"""The Python API: load a config, run an edit, write its outputs."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from soundguide.core.config import RunConfig
from soundguide.core.config import load_config as _load_config
from soundguide.core.engine import Editor, RunResult, resolve_device
from soundguide.core.outputs import RunWriter
from soundguide.core.plugins import load_registries
from soundguide.core.registry import Registries


def load_config(
    path: str | os.PathLike[str],
    overrides: Sequence[str] = (),
    *,
    registries: Registries | None = None,
    plugins: Sequence[str | ModuleType] = (),
) -> RunConfig:
    """Read and validate a TOML run config (``overrides`` as with ``--set``)."""
    if registries is None:
        registries = load_registries(plugins=plugins)
    return _load_config(path, registries, overrides)


def edit(
    config: RunConfig | str | os.PathLike[str],
    *,
    out: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    write: bool = True,
    device: str | torch.device = "cpu",
    registries: Registries | None = None,
    plugins: Sequence[str | ModuleType] = (),
    overrides: Sequence[str] = (),
    trust_checkpoint: bool = False,
    progress: bool = True,
    extra_manifest: dict[str, Any] | None = None,
    malloc: str | None = None,
) -> RunResult:
    """Run one edit from a config (object or TOML path) and write its outputs.

    Outputs go to ``out`` or the config's ``[output] dir``; ``write=False``
    only returns the :class:`RunResult`. ``malloc`` sets the process's
    allocator policy for the run (see :mod:`soundguide.core.memory`); None
    leaves it alone.
    """
    if registries is None:
        registries = load_registries(plugins=plugins)
    if not isinstance(config, RunConfig):
        config = _load_config(config, registries, overrides)
    elif overrides:
        raise TypeError("overrides apply to a config file; change the config object instead")
    device = resolve_device(device)
    editor = Editor(
        config,
        registries,
        device=device,
        trust_checkpoint=trust_checkpoint,
        progress=progress,
        malloc=malloc,
    )
    writer = None
    steps = None
    if write:
        writer = RunWriter(Path(out) if out is not None else config.output.dir, overwrite=overwrite)
        writer.claim()
        out_cfg = config.output
        steps = writer.step_writer(out_cfg.save_every, out_cfg.gif, config.optimization.steps)
        editor.subscribe(steps)
    result = editor.run()
    if writer is not None and steps is not None:
        writer.write_result(result, config, device=str(device), extra=extra_manifest)
        steps.finish()
    return result
