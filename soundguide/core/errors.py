"""Exception types of soundguide.

Every error a user can cause with bad input (a file, a config, a checkpoint,
a plugin name) is a :class:`SoundguideError`. The CLI catches these once,
prints ``error: <message>`` and the hint, and exits with code 2.
"""

from __future__ import annotations


def one_line(text: object, limit: int = 160) -> str:
    """``text`` (or an exception's message) as one line for an error or a report:
    runs of whitespace become one space, and past ``limit`` characters it is cut
    to end in "..."; an exception without a message gives its type's name."""
    squashed = " ".join(str(text).split())
    if not squashed and isinstance(text, BaseException):
        squashed = type(text).__name__
    return squashed if len(squashed) <= limit else squashed[: limit - 3] + "..."


def exception_line(exc: BaseException, limit: int = 160) -> str:
    """``"RuntimeError: what it says"`` on one line (see :func:`one_line`), or the
    type's name alone for an exception without a message."""
    text = one_line(str(exc), limit)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class SoundguideError(Exception):
    """Base class of soundguide's own errors: one line, plus an optional hint."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class ConfigError(SoundguideError):
    """A run config (TOML file, --set override or Python object) is invalid."""


class PluginError(SoundguideError):
    """A plugin could not be found, registered or built."""


class UnknownPluginError(PluginError):
    """A plugin name that no loaded plugin registered."""


class DuplicatePluginError(PluginError):
    """Two plugins registered the same name for the same kind."""


class CheckpointError(SoundguideError):
    """A checkpoint file is missing, unreadable, unsafe or of the wrong shape."""


class WeightsError(SoundguideError):
    """A known-weights entry could not be found, downloaded or verified."""


class AudioError(SoundguideError):
    """An audio file or waveform cannot be used (missing, corrupt, silent...)."""


class ImageError(SoundguideError):
    """An image file cannot be used as input."""


class LatentError(SoundguideError):
    """A latent file has the wrong content or shape."""


class OutputError(SoundguideError):
    """The output folder cannot be written (exists and is not empty, ...)."""


class DatasetError(SoundguideError):
    """A dataset folder or manifest cannot be used."""
