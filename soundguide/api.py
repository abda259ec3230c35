"""The Python API: load a config, run an edit, write its outputs.

:func:`load_config` is :func:`soundguide.core.config.load_config` (one function:
``load_config(path, registries=None, overrides=(), *, plugins=())``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import torch

from soundguide.core.config import RunConfig, load_config
from soundguide.core.engine import Editor, RunResult, StepEvent, Stop, resolve_device
from soundguide.core.interfaces import ModelStore
from soundguide.core.outputs import LossLog, RunWriter, StepWriter
from soundguide.core.plugins import load_registries
from soundguide.core.registry import Registries
from soundguide.core.runfolder import RunFolder

__all__ = ["edit", "load_config"]


def edit(
    config: RunConfig | str | os.PathLike[str],
    *,
    out: str | os.PathLike[str] | RunFolder | None = None,
    overwrite: bool = False,
    write: bool = True,
    device: str | torch.device = "cpu",
    registries: Registries | None = None,
    plugins: Sequence[str | ModuleType] = (),
    overrides: Sequence[str] = (),
    trust_checkpoint: bool = False,
    progress: bool = True,
    extra_manifest: dict[str, Any] | None = None,
    stop: Stop | None = None,
    models: ModelStore | None = None,
    subscribers: Sequence[Callable[[StepEvent], None]] = (),
) -> RunResult:
    """Run one edit from a config (object or TOML path) and write its outputs.

    Outputs go to ``out`` or the config's ``[output] dir``; ``write=False``
    only returns the :class:`RunResult`. ``out`` may also be a
    :class:`~soundguide.core.runfolder.RunFolder` the caller has opened (and
    closes). Otherwise the folder is locked for the run and
    checked for writing before anything is loaded; a run that fails before
    its first step leaves no folder behind; a stopped, non-finite or failed
    run writes what it has. ``stop`` (a :class:`~soundguide.core.engine.Stop`)
    lets another thread end the run between two steps. ``subscribers`` receive
    every :class:`~soundguide.core.engine.StepEvent` (after the output
    recorders); ``models`` shares loaded networks between runs (see
    :class:`~soundguide.core.interfaces.ModelStore`). Nothing process-wide
    changes: no allocator setting, signal handler or global state.

    Raises :class:`~soundguide.core.errors.OutputError` when an output could not
    be written (after writing all the others), and re-raises the exception of a
    run that failed in a step (after writing what it had).
    """
    if registries is None:
        registries = load_registries(plugins=plugins)
    if not isinstance(config, RunConfig):
        config = load_config(config, registries, overrides)
    elif overrides:
        raise TypeError("overrides apply to a config file; change the config object instead")
    device = resolve_device(device)
    stop = stop if stop is not None else Stop()
    owned = not isinstance(out, RunFolder)
    if isinstance(out, RunFolder):
        folder = out
    else:
        folder = RunFolder(out if out is not None else config.output.dir, overwrite=overwrite)
    try:
        if write and owned:
            folder.open()
        editor = Editor(
            config,
            registries,
            device=device,
            trust_checkpoint=trust_checkpoint,
            progress=progress,
            stop=stop,
            models=models,
        )
        recorders: tuple[Any, ...] = ()
        if write:

            def failed_write(message: str) -> None:
                stop.request(message, status="failed")

            out_cfg = config.output
            recorders = (
                StepWriter(
                    folder.folder,
                    save_every=out_cfg.save_every,
                    gif=out_cfg.gif,
                    steps=config.optimization.steps,
                    on_error=failed_write,
                ),
                LossLog(folder.folder / "losses.csv", on_error=failed_write),
            )
            for recorder in recorders:
                editor.subscribe(recorder)
        for subscriber in subscribers:
            editor.subscribe(subscriber)
        result = editor.run()
    except BaseException:
        if owned:
            folder.close(keep=False)  # removes what open() created, where nothing was written
        raise
    try:
        if write:
            RunWriter(folder.folder).write_result(
                result, config, device=str(device), extra=extra_manifest, recorders=recorders
            )
    finally:
        if owned:
            folder.close()
    if result.error is not None:
        raise result.error
    return result
