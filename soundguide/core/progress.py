"""Progress bars that never break the work they show.

A progress bar writes to standard error, which can close under a running job:
``soundguide edit run.toml 2>&1 | head``, a terminal that went away, a full
log disk. tqdm then raises ``BrokenPipeError`` (or another ``OSError``) from
``update()`` or ``close()``, in the middle of an optimization or a download,
and the results would be lost to a display. :func:`progress_bar` gives a tqdm
bar whose stream goes quiet after its first failed write instead.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO


class QuietStream:
    """A text stream that stops writing, silently, after its first ``OSError``
    or ``ValueError`` (a closed file); everything else is the wrapped stream's."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.failed = False

    def write(self, text: str) -> int:
        if not self.failed:
            try:
                return self._stream.write(text)
            except (OSError, ValueError):
                self.failed = True
        return len(text)

    def flush(self) -> None:
        if not self.failed:
            try:
                self._stream.flush()
            except (OSError, ValueError):
                self.failed = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def progress_bar(*, enabled: bool = True, file: TextIO | None = None, **options: Any) -> Any:
    """``tqdm.auto.tqdm(**options)`` on a :class:`QuietStream` of ``file`` (standard
    error by default); disabled when ``enabled`` is false."""
    from tqdm.auto import tqdm

    stream = QuietStream(file if file is not None else sys.stderr)
    return tqdm(file=stream, disable=not enabled, **options)
