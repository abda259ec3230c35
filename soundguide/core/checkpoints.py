"""Safe checkpoint loading and the known-weights registry.

``load_checkpoint`` never runs code hidden in a pickle unless the user said
``trust=True`` (``--trust-checkpoint``): it loads with
``torch.load(weights_only=True)`` and allows exactly one extra global,
``argparse.Namespace``, which rosinality's training checkpoints carry under
``args``.

Known weights are public files (StyleGAN2 models, the SoundCLIP encoder, ...)
that plugins declare by name through the ``register_weights`` hook. They are
downloaded on first use into ``$SOUNDGUIDE_HOME/weights`` (default
``~/.cache/soundguide/weights``), with a progress bar; the sha256 is checked
when the entry knows it and pinned in ``pins.json`` on first download when it
does not.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import pickletools
import re
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from soundguide.core.errors import CheckpointError, DuplicatePluginError, WeightsError, one_line
from soundguide.core.files import atomic_write_text, create_temporary, os_reason, sha256_file

HOME_ENV = "SOUNDGUIDE_HOME"
_SAFE_GLOBALS = [argparse.Namespace]


def soundguide_home() -> Path:
    """The cache folder: ``$SOUNDGUIDE_HOME`` or ``~/.cache/soundguide``."""
    env = os.environ.get(HOME_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "soundguide"


def _unsafe_globals(path: Path) -> list[str]:
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:
        return []


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    trust: bool = False,
    map_location: Any = "cpu",
    mmap: bool = False,
) -> Any:
    """Load a torch checkpoint without executing pickled code.

    Only tensors, plain containers and ``argparse.Namespace`` are allowed unless
    ``trust`` is true. Raises :class:`CheckpointError` with one line naming the
    file and, for a refused pickle, the global it wanted to load. Files that
    are no checkpoint at all say so first, whatever ``trust`` says, from their
    first bytes: a web page saved by a failed download (a file host's quota or
    sign-in page), a zip or pickle cut short (an incomplete download or copy).

    ``mmap``: tensors of a zip-format file are mapped from the file rather than
    read, so weights that are never touched never take memory (ignored for
    the legacy format and off the CPU).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(
            f"checkpoint not found: {path}",
            hint="check the path (relative paths in a config resolve against its folder)",
        )
    if path.is_dir():
        raise CheckpointError(
            f"checkpoint is a directory, not a file: {path}",
            hint="give the checkpoint file inside it",
        )
    if path.stat().st_size == 0:
        raise CheckpointError(
            f"checkpoint is empty (0 bytes): {path}",
            hint="an interrupted download or copy: delete it and download or copy it again",
        )
    head = _head(path)
    if _is_html(head):
        raise CheckpointError(
            f"checkpoint {path} is an HTML page, not a checkpoint: the download failed",
            hint="delete it and retry the download",
        )
    if head.startswith(_ZIP_MAGIC) and not zipfile.is_zipfile(path):
        raise _damaged(path)
    options: dict[str, Any] = {"map_location": map_location}
    if mmap and str(map_location) == "cpu" and zipfile.is_zipfile(path):
        options["mmap"] = True
    if trust:
        try:
            return torch.load(path, weights_only=False, **options)
        except Exception as exc:  # a trusted file can still be corrupt
            raise _unreadable(path, head, exc) from None
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            return torch.load(path, weights_only=True, **options)
    except pickle.UnpicklingError as exc:
        if _cut_short(path, head, exc):
            raise _damaged(path) from None
        text = str(exc)
        names = _unsafe_globals(path) if zipfile.is_zipfile(path) else []
        if not names:
            names = re.findall(r"GLOBAL ([\w.]+)", text)
        if names:
            raise CheckpointError(
                f"refusing to load {path}: it asks to unpickle {', '.join(sorted(set(names)))}, "
                "which could run arbitrary code",
                hint="if you trust this file, pass --trust-checkpoint (trust=True in Python)",
            ) from None
        if _is_text(head):
            raise _text_file(path, head) from None
        detail = re.search(r"WeightsUnpickler error: \s*(.+?)\s*(?:\n\n|$)", text, re.S)
        raise CheckpointError(
            f"cannot read checkpoint {path} safely: "
            f"{one_line(detail.group(1)) if detail else 'not a torch checkpoint, or corrupt'}",
            hint="if the file is a checkpoint you trust, pass --trust-checkpoint (trust=True in Python)",
        ) from None
    except Exception as exc:
        raise _unreadable(path, head, exc) from None


_ZIP_MAGIC = b"PK\x03\x04"
_HEAD_BYTES = 512
_MARKUP = ("<!doctype", "<html", "<?xml", "<head", "<body", "<!--", "<meta", "<title", "<script")
"""How the pages that file hosts answer with (quota, sign-in, error pages) begin."""
_BOMS = (b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")
_LEGACY_MAGIC = str(0x1950A86A20F9469CFC6C).encode()  # torch's legacy magic number, as text
_TRUNCATION = re.compile(
    r"unexpected EOF|ran out of input|truncated|PytorchStreamReader failed", re.I
)


def _head(path: Path) -> bytes:
    """The first bytes of a file: enough to tell a web page or a cut zip from a checkpoint."""
    try:
        with open(path, "rb") as file:
            return file.read(_HEAD_BYTES)
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {os_reason(exc)}") from None


def _head_text(head: bytes) -> str | None:
    """The first bytes as text (a byte-order mark dropped), or None when they are binary."""
    # the byte-order mark says which UTF-16; the codec would guess the machine's order
    encoding = {b"\xff\xfe": "utf-16-le", b"\xfe\xff": "utf-16-be"}.get(head[:2], "utf-8")
    for bom in _BOMS:
        if head.startswith(bom):
            head = head[len(bom) :]
            break
    try:
        text = head.decode(encoding)
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:  # not a character cut at the end of the sniffed bytes
            return None
        text = head[: exc.start].decode(encoding)
    if any(ord(c) < 32 and c not in "\t\n\r\f" for c in text):
        return None
    return text


def _is_html(head: bytes) -> bool:
    text = _head_text(head)
    return text is not None and text.lstrip().lower().startswith(_MARKUP)


def _is_text(head: bytes) -> bool:
    if _LEGACY_MAGIC in head[:32]:  # a legacy torch file pickled with protocol 0 is text too
        return False
    text = _head_text(head)
    return bool(text and text.strip())


def _text_file(path: Path, head: bytes) -> CheckpointError:
    first = (_head_text(head) or "").strip().splitlines()[0]
    return CheckpointError(
        f"cannot read checkpoint {path}: it is a text file, not a checkpoint "
        f"(it begins {one_line(first, 60)!r})",
        hint="a failed download saves the server's answer: delete it and retry the download",
    )


def _damaged(path: Path) -> CheckpointError:
    return CheckpointError(
        f"checkpoint {path} is truncated or corrupt ({path.stat().st_size} bytes): "
        "an incomplete download or copy",
        hint="delete it and download or copy it again",
    )


def _unreadable(path: Path, head: bytes, exc: Exception) -> CheckpointError:
    """The error for a file torch.load could not read: cut short, text, or otherwise."""
    if _cut_short(path, head, exc):
        return _damaged(path)
    if _is_text(head):
        return _text_file(path, head)
    return CheckpointError(
        f"cannot read checkpoint {path}: {type(exc).__name__}: {_first_line(exc)}"
    )


def _cut_short(path: Path, head: bytes, exc: Exception) -> bool:
    """Whether a torch file failed to load because it is incomplete or damaged.

    Torch says so for missing bytes of a zip record or a legacy file's
    storages; a pickle cut short is found by walking its opcodes (without
    running any: ``pickletools``), which a refused global of a truncated
    pickle would otherwise hide.
    """
    if not (head.startswith(_ZIP_MAGIC) or head[:1] == b"\x80"):
        return False
    # only torch's own read errors are taken at their word: an unpickling error or a
    # missing module or attribute quotes names from the file ('truncated_normal')
    quotes_the_file = isinstance(exc, pickle.UnpicklingError | AttributeError | ImportError)
    if isinstance(exc, EOFError) or (not quotes_the_file and _TRUNCATION.search(str(exc))):
        return True
    try:
        if head.startswith(_ZIP_MAGIC):
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if n.endswith("/data.pkl")]
                if names:
                    for _ in pickletools.genops(archive.read(names[0])):
                        pass
        else:
            # a legacy file: magic number, protocol, system info, the object, storage keys
            with open(path, "rb") as file:
                for _ in range(5):
                    if not file.read(1):  # ends between pickles: not cut inside one
                        break
                    file.seek(-1, os.SEEK_CUR)
                    for _ in pickletools.genops(file):
                        pass
    except Exception:
        return True
    return False


_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


def _json_kind(value: object) -> str:
    kinds = {list: "list", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return one_line(text.splitlines()[0] if text else type(exc).__name__)


@dataclass(frozen=True)
class KnownWeights:
    """A public weights file soundguide knows how to fetch.

    ``sha256`` and ``size`` are optional: when the publisher gives no checksum
    the first download pins one in ``pins.json`` and ``soundguide weights
    verify`` checks later copies against it.
    """

    name: str
    url: str | None
    """None when there is no public direct download (the description says how to get it)."""
    filename: str
    license: str
    description: str = ""
    sha256: str | None = None
    size: int | None = None
    folder: str | None = None
    """Where the file lives when not in soundguide's cache (``~`` expanded): CLIP
    models share ``~/.cache/clip`` with the ``clip`` package."""


class WeightsRegistry:
    """Name -> :class:`KnownWeights`, with download into the cache and verification."""

    def __init__(self, home: str | os.PathLike[str] | None = None) -> None:
        self._entries: dict[str, KnownWeights] = {}
        self._owners: dict[str, tuple[str, str]] = {}
        self._home = Path(home) if home is not None else None
        self._current = ("<python>", "<python>")

    # -- registration -------------------------------------------------------------
    def add(self, entry: KnownWeights) -> KnownWeights:
        if entry.name in self._entries:
            raise DuplicatePluginError(
                f"known weights {entry.name!r} registered twice: by plugin "
                f"{self._owners[entry.name][0]!r} and by plugin {self._current[0]!r}"
            )
        self._entries[entry.name] = entry
        self._owners[entry.name] = self._current
        return entry

    def owner(self, name: str) -> tuple[str, str]:
        """(plugin, distribution) that registered ``name``."""
        return self._owners[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[KnownWeights]:
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, name: str) -> KnownWeights:
        if name not in self._entries:
            from soundguide.core.registry import unknown_name_message

            raise WeightsError(
                unknown_name_message("weights name", name, self._entries),
                hint="`soundguide weights list` shows the known names; or give a local file's path",
            )
        return self._entries[name]

    # -- files --------------------------------------------------------------------
    @property
    def folder(self) -> Path:
        return (self._home if self._home is not None else soundguide_home()) / "weights"

    def local_path(self, name: str) -> Path:
        """Where ``name``'s file is expected (``soundguide weights list`` prints it)."""
        entry = self.get(name)
        folder = Path(entry.folder).expanduser() if entry.folder else self.folder
        return folder / entry.filename

    def _pins_path(self) -> Path:
        return self.folder / "pins.json"

    def pins(self) -> dict[str, str]:
        """File name -> sha256 pinned on first download (``pins.json``; {} when there is none)."""
        path = self._pins_path()
        try:
            pins = json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise WeightsError(f"cannot read {path}: {exc}") from None
        if not isinstance(pins, dict):
            found = f"a JSON {_json_kind(pins)}"
        else:
            bad = [
                f"{k!r}: {one_line(json.dumps(v), 40)}"
                for k, v in pins.items()
                if not (isinstance(v, str) and _SHA256.fullmatch(v))
            ]
            if not bad:
                return {k: v.lower() for k, v in pins.items()}
            found = names_preview(bad, 2)
        raise WeightsError(
            f"{path} is not a pins file: expected a JSON object of file name -> sha256 "
            f"(64 hex digits), found {found}",
            hint="fix it, or delete it (the next download of a file pins it again)",
        )

    def _pin(self, entry: KnownWeights, digest: str) -> None:
        pins = self.pins()
        pins[entry.filename] = digest
        atomic_write_text(self._pins_path(), json.dumps(pins, indent=2, sort_keys=True) + "\n")

    def expected_sha256(self, name: str) -> str | None:
        entry = self.get(name)
        return entry.sha256 or self.pins().get(entry.filename)

    def fetch(self, name: str, *, progress: bool = True) -> Path:
        """Return the local file for ``name``, downloading it on first use."""
        path = self.local_path(name)
        if path.exists():
            return path
        return self.download(name, progress=progress)

    def download(self, name: str, *, progress: bool = True) -> Path:
        entry = self.get(name)
        path = self.local_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        hint = (
            f"download {entry.url} yourself to {path}, or point the config at a local file; "
            f"set {HOME_ENV} to change the cache folder"
        )
        if entry.url is None:
            raise WeightsError(
                f"{name!r} has no public download; put the file at {path}",
                hint=entry.description
                or f"or point the config at a local copy of {entry.filename}",
            )
        expected = self.expected_sha256(name)
        digest = download_file(
            entry.url,
            path,
            what=repr(name),
            sha256=expected,
            size=entry.size,
            progress=progress,
            hint=hint,
        )
        if expected is None:
            self._pin(entry, digest)
        return path

    def verify(self, name: str) -> tuple[str, str]:
        """Check a downloaded file. Returns ``(status, detail)``.

        status is one of ``ok``, ``missing``, ``unpinned``, ``mismatch``.
        """
        path = self.local_path(name)
        if not path.exists():
            return "missing", str(path)
        got = sha256_file(path)
        expected = self.expected_sha256(name)
        if expected is None:
            return "unpinned", got
        if got != expected:
            return "mismatch", f"got {got}, expected {expected}"
        return "ok", got


def download_file(
    url: str,
    path: Path,
    *,
    what: str,
    sha256: str | None = None,
    size: int | None = None,
    progress: bool = True,
    hint: str | None = None,
) -> str:
    """Download ``url`` to ``path`` with a progress bar; return the file's sha256.

    The file appears at ``path`` only once complete and, when ``sha256`` is
    given, matching it; a failed or corrupt download leaves nothing behind.
    Raises :class:`WeightsError` (one line, naming ``what``, the URL and the
    path) when the download fails, answers with a web page, or mismatches.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = create_temporary(path.parent, path.name)  # the user's umask, as any download
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            try:
                response = urllib.request.urlopen(url, timeout=30)  # noqa: S310
            except (urllib.error.URLError, OSError, ValueError) as exc:
                reason = getattr(exc, "reason", exc)
                raise WeightsError(
                    f"cannot download {what} from {url} ({reason}); expected at {path}", hint=hint
                ) from None
            with response:
                if "text/html" in (response.headers.get("Content-Type") or ""):
                    # file hosts answer quota or confirmation pages with HTML
                    raise WeightsError(
                        f"cannot download {what}: {url} answered with a web page, "
                        f"not the file; expected at {path}",
                        hint=hint,
                    )
                total = int(response.headers.get("Content-Length") or 0) or size
                bar = _progress_bar(total, f"downloading {path.name}", progress)
                try:
                    while block := response.read(1 << 20):
                        out.write(block)
                        digest.update(block)
                        bar.update(len(block))
                except OSError as exc:
                    raise WeightsError(
                        f"download of {what} from {url} failed: {exc}; expected at {path}",
                        hint=hint,
                    ) from None
                finally:
                    bar.close()
        got = digest.hexdigest()
        if sha256 is not None and got != sha256:
            raise WeightsError(
                f"sha256 mismatch for {what} from {url}: got {got}, expected {sha256}",
                hint="the download is corrupt or the file changed upstream; nothing was kept",
            )
        os.replace(tmp, path)
        return got
    finally:
        tmp.unlink(missing_ok=True)


def _progress_bar(total: int | None, desc: str, enabled: bool):
    from soundguide.core.progress import progress_bar

    return progress_bar(
        total=total or None,
        desc=desc,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        enabled=enabled,
        leave=False,
    )


# -- state dicts --------------------------------------------------------------------


def names_preview(items: list[str], limit: int = 4) -> str:
    """``a, b, c, d (+3 more)``."""
    shown = ", ".join(items[:limit])
    return f"{shown} (+{len(items) - limit} more)" if len(items) > limit else shown


def read_checkpoint(
    path_or_state_dict: str | os.PathLike[str] | Any,
    *,
    trust: bool = False,
    map_location: Any = "cpu",
    mmap: bool = False,
) -> tuple[str, Any]:
    """``(source, object)``: a mapping is passed through, a path is read with :func:`load_checkpoint`."""
    if isinstance(path_or_state_dict, Mapping):
        return "<state dict>", path_or_state_dict
    source = str(Path(path_or_state_dict).expanduser())
    return source, load_checkpoint(source, trust=trust, map_location=map_location, mmap=mmap)


def unwrap_state_dict(
    obj: Any,
    source: str,
    *,
    containers: tuple[str, ...] = ("state_dict",),
    prefixes: tuple[str, ...] = ("module.",),
) -> dict[str, torch.Tensor]:
    """The tensor mapping inside a loaded checkpoint.

    Unwraps ``{container: ...}`` dicts (and modules) and strips prefixes that
    every key carries (``module.`` from DataParallel / DDP). Raises
    :class:`CheckpointError` when no mapping of tensors is found.
    """
    for _ in range(3):
        if isinstance(obj, torch.nn.Module):
            obj = obj.state_dict()
        if not isinstance(obj, Mapping):
            break
        inner = next(
            (obj[k] for k in containers if isinstance(obj.get(k), Mapping | torch.nn.Module)), None
        )
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"checkpoint {source} holds no state dict (got {type(obj).__name__})")
    bad = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(
            f"checkpoint {source} is not a state dict: {names_preview(bad)} are not tensors"
        )
    state = {str(k): v for k, v in obj.items()}
    for prefix in prefixes:
        while state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def check_state_dict(
    expected: Mapping[str, torch.Tensor],
    state: Mapping[str, torch.Tensor],
    *,
    source: str,
    what: str,
    hint: str | None = None,
) -> None:
    """Raise one :class:`CheckpointError` line naming missing, unexpected and misshapen keys."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    parts = []
    if missing:
        parts.append(f"missing keys {names_preview(missing)}")
    if unexpected:
        parts.append(f"unexpected keys {names_preview(unexpected)}")
    if mismatched:
        parts.append(f"wrong shapes (checkpoint vs model) {names_preview(mismatched)}")
    if parts:
        raise CheckpointError(
            f"checkpoint {source} does not fit {what}: " + "; ".join(parts), hint=hint
        )
