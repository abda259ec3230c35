"""An output folder owned by one run: the lock, the write probe, ``--overwrite`` and clean-up.

::

    folder = RunFolder(path, overwrite=False)
    folder.open()              # refuse a file, lock, refuse a non-empty folder, probe-write
    ...                        # the run writes its files
    folder.close(keep=True)    # release the lock; keep=False also removes what open() created

One run per folder: :meth:`RunFolder.open` takes an exclusive lock on
``<folder>/.soundguide.lock`` (``flock``, held for the run's lifetime and
released by the operating system however the process ends, so a lock left by
a dead process never blocks). A second run into the same folder is refused at
once with the first one's pid. Writing the lock file is the write probe: a
read-only folder or mount, a full disk, ``/proc`` or ``/sys`` are found before
any model is loaded.

``--overwrite`` replaces soundguide's own files only (:func:`is_own_file`):
the outputs, ``steps/NNNNN.pt|png`` and leftover temporary files; whatever
else the user keeps in the folder stays.
"""

from __future__ import annotations

import datetime as _dt
import errno
import json
import os
import re
import socket
from pathlib import Path

from soundguide.core.errors import OutputError
from soundguide.core.files import os_reason

LOCK_NAME = ".soundguide.lock"
OUTPUT_FILES = (
    "photo.png",
    "source.png",
    "edited.png",
    "comparison.png",
    "latent_source.pt",
    "latent_edited.pt",
    "losses.csv",
    "run.json",
    "trajectory.gif",
    "video.mp4",
    "latents.pt",
)
"""The files a run (or ``soundguide video``) writes at the top of its folder."""
INVERT_FILES = (
    "latent.pt",
    "aligned.png",
    "reconstruction.png",
    "side_by_side.png",
    "invert.json",
)
"""The files ``soundguide invert`` writes into one subfolder per photo."""
STEPS_DIR = "steps"
FRAMES_DIR = "frames"
"""``soundguide video``'s PNG frames, ``frames/NNNNN.png``."""
_STEP_FILE = re.compile(r"\d{5,}\.(pt|png)")
_TEMPORARY = re.compile(r"\..+\.[0-9a-f]{8}\.tmp")  # soundguide.core.files.create_temporary


def is_own_file(relative: str) -> bool:
    """True for a path (relative to the run folder) that a soundguide run writes."""
    parts = Path(relative).parts
    if len(parts) == 1:
        return parts[0] in OUTPUT_FILES or bool(_TEMPORARY.fullmatch(parts[0]))
    if len(parts) == 2 and parts[0] in (STEPS_DIR, FRAMES_DIR):
        return bool(_STEP_FILE.fullmatch(parts[1]) or _TEMPORARY.fullmatch(parts[1]))
    if len(parts) == 2:  # soundguide invert: PHOTO/latent.pt ...
        return parts[1] in INVERT_FILES or bool(_TEMPORARY.fullmatch(parts[1]))
    return False


class RunFolder:
    """Owns an output folder for the duration of one run (see the module docstring)."""

    def __init__(self, folder: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        self.folder = Path(folder).expanduser()
        self.overwrite = overwrite
        self._created: list[Path] = []
        self._lock: _Lock | None = None

    def __enter__(self) -> RunFolder:
        self.open()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(keep=exc_type is None)

    @property
    def locked(self) -> bool:
        return self._lock is not None

    def open(self) -> None:
        """Create the folder if needed, lock it, and check that this run may write there.

        Raises :class:`OutputError` (and leaves nothing behind) when the path is a
        file, the folder cannot be created or written, another run holds it, or it
        holds files and ``overwrite`` is false.
        """
        folder = self.folder
        if folder.exists() and not folder.is_dir():
            raise OutputError(
                f"output path exists and is not a folder: {folder}",
                hint="choose another --out",
            )
        try:
            self._make_folders()
            self._lock = _Lock.acquire(folder / LOCK_NAME)
            self._check_contents()
        except BaseException:
            self.close(keep=False)
            raise

    def close(self, *, keep: bool = True) -> None:
        """Release the lock. ``keep=False`` also removes the folders :meth:`open` created,
        where they are empty (a run that failed before writing anything leaves no trace)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        if not keep:
            for path in reversed(self._created):
                try:
                    path.rmdir()
                except FileNotFoundError:
                    continue
                except OSError:
                    break  # not empty: keep it and its parents
        self._created = []

    # -- open's steps ------------------------------------------------------------------
    def _make_folders(self) -> None:
        missing = []
        path = self.folder.absolute()
        while not path.exists():
            missing.append(path)
            if path.parent == path:
                break
            path = path.parent
        for path in reversed(missing):
            self._created.append(path)  # first: a Ctrl-C right after mkdir still cleans it up
            try:
                path.mkdir()
            except FileExistsError:
                self._created.pop()
            except OSError as exc:
                self._created.pop()
                raise OutputError(
                    f"cannot create output folder {self.folder}: {os_reason(exc)}",
                    hint="choose an --out in a folder you can write to",
                ) from None

    def _check_contents(self) -> None:
        others = [p for p in self.folder.iterdir() if p.name != LOCK_NAME]
        if not others:
            return
        if not self.overwrite:
            raise OutputError(
                f"output folder is not empty: {self.folder}",
                hint="pass --overwrite to replace soundguide's outputs in it (other files "
                "are kept), or choose another --out",
            )
        self.remove_own_files()

    def remove_own_files(self) -> list[Path]:
        """Delete soundguide's files from an earlier run (see :func:`is_own_file`)."""
        removed = []
        candidates = [p for p in self.folder.iterdir() if p.is_file()]
        for sub in self.folder.iterdir():
            if sub.is_dir() and not sub.is_symlink():
                candidates += [p for p in sub.iterdir() if p.is_file()]
        for path in candidates:
            if is_own_file(str(path.relative_to(self.folder))):
                try:
                    path.unlink()
                except OSError as exc:
                    raise OutputError(
                        f"--overwrite: cannot remove {path}: {os_reason(exc)}",
                        hint="remove it yourself, or choose another --out",
                    ) from None
                removed.append(path)
        for sub in {p.parent for p in removed} - {self.folder}:
            if not any(sub.iterdir()):
                sub.rmdir()
        return removed


class _Lock:
    """An exclusive lock file holding the owner's pid and host (see the module docstring)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd

    @classmethod
    def acquire(cls, path: Path) -> _Lock:
        folder = path.parent
        for _ in range(10):
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as exc:
                raise OutputError(
                    f"cannot write to output folder {folder}: {os_reason(exc)}",
                    hint="choose an --out in a folder you can write to",
                ) from None
            held = False
            try:
                try:
                    held = _try_lock(fd)
                except OSError:  # a file system without locks: fall back to the pid inside
                    held = not _holder_alive(_read_holder(fd))
                if not held:
                    holder = _read_holder(fd)
                    raise OutputError(
                        f"another soundguide run ({_describe(holder)}) is writing to {folder}",
                        hint="wait until it has finished, or choose another --out",
                    )
                # the previous owner may have removed the file between our open and lock
                try:
                    same = os.path.samestat(os.fstat(fd), os.stat(path))
                except FileNotFoundError:
                    same = False
                if same:
                    lock = cls(path, fd)
                    lock._write_holder()
                    return lock
            except BaseException:
                if held:  # ours: nobody else may rely on it
                    path.unlink(missing_ok=True)
                os.close(fd)
                raise
            os.close(fd)  # a file nobody uses any more: try again
        raise OutputError(f"cannot lock output folder {folder}: the lock file keeps changing")

    def _write_holder(self) -> None:
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        data = (json.dumps(holder) + "\n").encode()
        try:
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, data, 0)
            os.fsync(self.fd)
        except OSError as exc:
            raise OutputError(
                f"cannot write to output folder {self.path.parent}: {os_reason(exc)}",
                hint="free some space or choose another --out",
            ) from None

    def release(self) -> None:
        try:
            self.path.unlink()  # while still holding the lock: no one can have taken it
        except OSError:
            pass
        os.close(self.fd)


def _try_lock(fd: int) -> bool:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def _read_holder(fd: int) -> dict:
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
        holder = json.loads(text)
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _holder_alive(holder: dict) -> bool:
    pid = holder.get("pid")
    if not isinstance(pid, int):
        return False
    if holder.get("host") != socket.gethostname():
        return True  # another machine's run: cannot tell, assume it runs
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _describe(holder: dict) -> str:
    pid = holder.get("pid")
    if not isinstance(pid, int):
        return "pid unknown"
    host = holder.get("host")
    where = f" on {host}" if host and host != socket.gethostname() else ""
    since = f", since {holder['started']}" if holder.get("started") else ""
    return f"pid {pid}{where}{since}"
