"""Runs the page's runs: :func:`soundguide.api.edit` in a thread, its steps streamed.

A run gets its own folder under the history folder the user chose::

    <history>/<YYYYmmdd-HHMMSS>-<id>/
        inputs/        the uploads it read (copied: the upload folder goes at exit)
        config.toml    the run config: `soundguide edit config.toml` reproduces the run
        run.json, latent_edited.pt, edited.png, ...   what `soundguide edit` writes

The config's ``[output] dir`` is ``<run>/rerun``, so running it again from the
CLI writes beside the app's outputs, never over them. The engine is the CLI's:
the same validation, :class:`~soundguide.core.engine.Stop` to end a run between
two steps (the thread is never killed), and a
:class:`~soundguide.core.interfaces.ModelStore` so networks load once per app.
A subscriber hands every step's losses, and every ``preview_every``-th image,
to a queue that the page reads (:meth:`RunHandle.updates`); the engine thread
does no image encoding for the page.
"""

from __future__ import annotations

import datetime as _dt
import queue
import secrets
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from soundguide.app.configs import PageRun, check_page, config_toml, copy_inputs, run_data
from soundguide.app.configs import validate as validate_data
from soundguide.core.engine import RunResult, StepEvent, Stop
from soundguide.core.errors import SoundguideError, exception_line
from soundguide.core.files import atomic_write_text
from soundguide.core.interfaces import ModelStore
from soundguide.core.registry import Registries

STOP_MESSAGE = "stopped in the app"


def error_line(exc: BaseException) -> str:
    """What the page shows for an error: ``error: message (hint)``, one line, never a traceback."""
    if isinstance(exc, SoundguideError):
        hint = f" ({exc.hint})" if exc.hint else ""
        return f"error: {exc.message}{hint}"
    return f"error: {exception_line(exc)}"


@dataclass
class Update:
    """What the page hears from a run: a ``step`` (with a preview ``image`` every k
    steps), then ``done`` (with the result) or ``error``."""

    kind: str
    step: int = 0
    steps: int = 0
    seconds_per_step: float | None = None
    losses: dict[str, float] = field(default_factory=dict)
    image: torch.Tensor | None = None
    final: bool = False
    result: RunResult | None = None
    error: str | None = None


class RunHandle:
    """One run: its folder, config, TOML, stop request and the queue of its updates."""

    def __init__(
        self, folder: Path, config: Any, toml_text: str, preview_every: int, session: str | None
    ) -> None:
        self.folder = folder
        self.config = config
        self.toml = toml_text
        self.preview_every = max(1, int(preview_every))
        self.session = session
        self.stop = Stop()
        self.queue: queue.Queue[Update] = queue.Queue()
        self.thread: threading.Thread | None = None
        self.finished = threading.Event()
        """Set when the run's folder is written and closed."""
        self.result: RunResult | None = None
        self.error: str | None = None
        self._started = time.perf_counter()
        self._last = self._started

    def __call__(self, event: StepEvent) -> None:
        """The engine's subscriber (its thread): losses every step, an image every k steps."""
        now = time.perf_counter()
        losses = {k: float(v.sum()) for k, v in event.losses.items()}
        preview = event.final or event.step % self.preview_every == 0
        seconds = (now - self._last) / max(1, event.step) if event.step else None
        if event.step == 0:
            self._last = now  # s/step counts from the first step, not the loading
        self.queue.put(
            Update(
                "step",
                step=event.step,
                steps=event.steps,
                seconds_per_step=seconds,
                losses=losses,
                image=event.image if preview else None,
                final=event.final,
            )
        )

    def updates(self, poll: float = 0.1) -> Iterator[Update]:
        """Every update until the run ends (the last is ``done`` or ``error``)."""
        while True:
            try:
                update = self.queue.get(timeout=poll)
            except queue.Empty:
                if self.finished.is_set() and self.queue.empty():
                    return
                continue
            yield update
            if update.kind in ("done", "error"):
                return

    def request_stop(self) -> None:
        self.stop.request(STOP_MESSAGE)


class AppRunner:
    """Starts runs from the page's state, one at a time, with shared networks."""

    def __init__(
        self,
        registries: Registries,
        *,
        history: Path,
        device: torch.device | str = "cpu",
        models: ModelStore | None = None,
        extra_manifest: dict[str, Any] | None = None,
    ) -> None:
        self.registries = registries
        self.history = Path(history)
        self.device = device
        self.models = models if models is not None else ModelStore()
        self.extra_manifest = extra_manifest or {}
        self.active: RunHandle | None = None
        self._lock = threading.Lock()

    def check(self, run: PageRun) -> Any:
        """The validated config of ``run`` as it stands (uploads where they are);
        raises the CLI's one-line errors."""
        check_page(run)
        return validate_data(run_data(run, self.history / "check"), self.registries)

    def start(
        self, run: PageRun, *, preview_every: int = 5, session: str | None = None
    ) -> RunHandle:
        """Check ``run``, make its folder (inputs, config.toml) and start it in a thread."""
        from soundguide.core.runfolder import RunFolder

        self.check(run)
        with self._lock:
            # a run whose last update the page has shown may still be closing its folder
            if self.active is not None and not self.active.finished.wait(5.0):
                raise SoundguideError("another run is in progress on this device; wait for it")
            out = RunFolder(self._new_folder())
            out.open()  # locked until the run's thread has written everything
            try:
                run = copy_inputs(run, out.folder / "inputs")
                data = run_data(run, (out.folder / "rerun").resolve())
                config = validate_data(data, self.registries)
                text = config_toml(data)
                atomic_write_text(out.folder / "config.toml", text)
            except BaseException:
                out.close()
                shutil.rmtree(out.folder, ignore_errors=True)  # made just now, by this run
                raise
            handle = RunHandle(out.folder, config, text, preview_every, session)
            self.active = handle
            handle.thread = threading.Thread(
                target=self._run, args=(handle, out), name="soundguide-run", daemon=True
            )
            handle.thread.start()
        return handle

    def stop(self, session: str | None = None) -> bool:
        """Ask the active run (of ``session``, when given) to stop between two steps."""
        handle = self.active
        if handle is None or handle.finished.is_set():
            return False
        if session is not None and handle.session not in (None, session):
            return False
        handle.request_stop()
        return True

    def stop_all(self, wait: float = 30.0) -> None:
        """At exit: stop the active run and let it write its outputs."""
        handle = self.active
        if handle is not None and handle.thread is not None and not handle.finished.is_set():
            handle.request_stop()
            handle.finished.wait(wait)

    def _new_folder(self) -> Path:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        return self.history / f"{stamp}-{secrets.token_hex(3)}"

    def _run(self, handle: RunHandle, out: Any) -> None:
        from soundguide.api import edit

        final = Update("error", error="error: the run ended without a result")
        try:
            handle.result = edit(
                handle.config,
                out=out,
                device=self.device,
                registries=self.registries,
                progress=False,
                stop=handle.stop,
                models=self.models,
                subscribers=[handle],
                extra_manifest={"app": self.extra_manifest} if self.extra_manifest else None,
            )
            final = Update("done", result=handle.result)
        except BaseException as exc:  # the page shows one line; the thread never dies loudly
            handle.error = error_line(exc)
            final = Update("error", error=handle.error)
        finally:
            out.close()
            if torch.device(self.device).type == "cuda":
                torch.cuda.empty_cache()  # the app owns its process: give the memory back
            handle.queue.put(final)
            handle.finished.set()
