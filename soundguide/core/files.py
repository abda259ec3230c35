"""Small file helpers shared by core: atomic writes and checksums."""

from __future__ import annotations

import functools
import hashlib
import io
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any


def os_reason(exc: OSError) -> str:
    """The system's words for a failed file operation ("Permission denied"), else the text."""
    return exc.strerror or str(exc)


def create_temporary(folder: Path, name: str) -> tuple[int, Path]:
    """A new, empty file ``.<name>.<random>.tmp`` in ``folder``: (descriptor, path).

    Created with mode 0o666 so the user's umask decides its permissions, as for
    any file a program writes (``tempfile.mkstemp`` would make it 0o600).
    """
    for _ in range(100):
        tmp = folder / f".{name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"cannot create a temporary file for {name} in {folder}")


def atomic_write(path: str | os.PathLike[str], write: Callable[[io.BufferedWriter], Any]) -> Path:
    """Call ``write(fh)`` on a temporary file next to ``path``, then rename it into place.

    A crash or Ctrl-C never leaves a half-written file under the final name,
    and a failed write (a full disk) leaves an earlier file of that name as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = create_temporary(path.parent, path.name)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file; remembered per (path, size, mtime) within the process."""
    stat = os.stat(path)
    return _sha256(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns, chunk)


@functools.lru_cache(maxsize=256)
def _sha256(path: str, size: int, mtime_ns: int, chunk: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
