"""The parameters and buffers of a TorchScript archive, read without running any of its code.

OpenAI distributes CLIP as TorchScript archives (``ViT-B-32.pt``, written by
torch 1.7). ``torch.jit.load`` compiles the archive's code and runs it while
loading (a class's ``__setstate__`` executes), so a crafted file runs code;
``torch.load(weights_only=True)`` refuses TorchScript archives outright, and
its unpickler would not stop ``__torch__`` classes anyway. Nothing in torch
reads the tensors alone, hence this module.

What ``torch.jit.save`` writes (a zip; the same layout from torch 1.5 to 2.x,
only the folder name varies):

- ``<prefix>/data.pkl``: the module tree as a protocol-2 pickle. Each module is
  ``GLOBAL '__torch__.<qualifier> <Class>'``, ``EMPTY_TUPLE``, ``NEWOBJ``, then a
  dict of its attributes (``training``, tensors, submodules, plain values) and
  ``BUILD``. Each tensor is ``GLOBAL 'torch._utils _rebuild_tensor_v2'`` applied
  to ``(storage, offset, size, stride, requires_grad, OrderedDict())``, with the
  storage a persistent id ``('storage', GLOBAL 'torch FloatStorage', '<key>',
  '<location>', numel)``; views of one storage share its key. A class that
  defines ``__getstate__`` pickles what that returned instead of the dict.
- ``<prefix>/data/<key>``: each storage's raw bytes, uncompressed (and 64-byte
  aligned by torch's writer).
- ``<prefix>/code/__torch__/<qualifier>.py``: each class's TorchScript source;
  ``constants.pkl`` and ``constants/``: tensors the code uses as constants
  (traced plain tensors end up there), which are no part of a state dict.

In data.pkl parameters, buffers and plain tensor attributes look alike (the
``requires_grad`` flag is no guide: a frozen parameter has it off). Only the
class declarations say which is which: each module class in the code begins
``class Linear(Module):`` followed by ``__parameters__ = ["weight", "bias", ]``
and ``__buffers__ = [...]``. Those lines are read as *text* with regular
expressions; the code is never compiled, imported or executed.

data.pkl is read by an allowlisting unpickler: every ``__torch__`` class
becomes an inert record of the state handed to it; the tensor rebuild
functions, ``collections.OrderedDict``, storage types, dtypes and the identity
list builders of ``torch.jit._pickle`` are replaced by local equivalents that
only build records; any other global is refused with a
:class:`~soundguide.core.errors.CheckpointError` naming it. A module class
whose state comes back through its own ``__setstate__`` is refused too: only
its code could say which attributes the state fills.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import re
import struct
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from soundguide.core.errors import CheckpointError

__all__ = ["read_torchscript_state_dict"]

TRUST_HINT = "if you trust this file, pass --trust-checkpoint (trust=True in Python)"

_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64,
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "ComplexFloatStorage": torch.complex64,
    "ComplexDoubleStorage": torch.complex128,
}
"""``torch.<Name>Storage`` globals of a persistent id (what torch 1.x and 2.x write)."""

_DTYPES = {
    str(dtype).removeprefix("torch."): dtype
    for dtype in (*_STORAGE_DTYPES.values(), torch.uint16, torch.uint32, torch.uint64)
}
"""``torch.float32``-style globals, which newer writers may put in a persistent id instead."""

_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")
_CLASS = re.compile(r"^class\s+([A-Za-z_]\w*)\s*(?:\(\s*([\w.]*)\s*\))?\s*:", re.M)
_NAMES = re.compile(r"\"([^\"\\]*)\"|'([^'\\]*)'")
_SETSTATE = re.compile(r"^\s+def\s+__setstate__\s*\(", re.M)


def read_torchscript_state_dict(
    path: str | os.PathLike[str], *, mmap: bool = True
) -> dict[str, torch.Tensor]:
    """The state dict of a TorchScript archive: parameters and buffers under dotted names.

    Keys and values equal ``torch.jit.load(path).state_dict()``; tensors are
    on the CPU, with ``requires_grad`` off. Tensors that were views of one
    storage still share its memory. Nothing of the archive's code runs.

    ``mmap``: storages stored uncompressed (as torch writes them) are mapped
    from the file, so weights that are never touched are never read;
    otherwise each storage is read once, when its first tensor is built.

    Raises :class:`CheckpointError` (one line naming the file) for a file that
    is not a TorchScript archive, is corrupt, or asks for anything besides
    tensors and plain data; refusals carry the ``--trust-checkpoint`` hint.
    """
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(
            f"cannot read TorchScript archive {path}: not a zip file, or truncated ({exc})"
        ) from None
    with archive:
        reader = _ArchiveReader(path, archive, mmap=mmap)
        root = reader.unpickle()
        refs = reader.module_tensors(root)
        return {name: reader.tensor(ref) for name, ref in refs.items()}


# -- what the unpickler hands out: inert records ---------------------------------------


class _Inert:
    """Base of the unpickler's records: pickle's BUILD must not change them."""

    __slots__ = ()

    def __setstate__(self, state: object) -> None:
        raise CheckpointError(f"data.pkl tries to set the state of a {type(self).__name__}")


class _DType(_Inert):
    """A storage type or dtype global: just its dtype."""

    __slots__ = ("dtype",)

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


class _StorageRef(_Inert):
    """One storage of ``<prefix>/data/<key>``: numel elements of dtype."""

    __slots__ = ("dtype", "key", "numel")

    def __init__(self, key: str, dtype: torch.dtype, numel: int) -> None:
        self.key, self.dtype, self.numel = key, dtype, numel


class _TensorRef(_Inert):
    """A tensor to be built: a strided view of a storage."""

    __slots__ = ("offset", "size", "storage", "stride")

    def __init__(
        self, storage: _StorageRef, offset: int, size: tuple[int, ...], stride: tuple[int, ...]
    ) -> None:
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


class _Function(_Inert):
    """An allowed global function, replaced by a local one that only builds records."""

    __slots__ = ("function", "name")

    def __init__(self, name: str, function: Callable[..., Any]) -> None:
        self.name, self.function = name, function

    def __call__(self, *args: Any) -> Any:
        return self.function(*args)


class _ScriptObject:
    """An object of a ``__torch__`` class: its class name and the state pickled for it.

    ``__setstate__`` records the state; no code of the class ever runs.
    """

    __slots__ = ("args", "state")
    qualified_name = "__torch__"

    def __init__(self, *args: Any) -> None:
        self.args = args

    def __setstate__(self, state: object) -> None:
        self.state = state


def _int(value: object, what: str) -> int:
    if type(value) is not int or value < 0:
        raise CheckpointError(f"data.pkl has a tensor whose {what} is {value!r}")
    return value


def _ints(value: object, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple | list):
        raise CheckpointError(f"data.pkl has a tensor whose {what} is {value!r}")
    return tuple(_int(v, what) for v in value)


def _rebuild_tensor(
    storage: object, offset: object, size: object, stride: object, *_: object
) -> _TensorRef:
    if not isinstance(storage, _StorageRef):
        raise CheckpointError("data.pkl rebuilds a tensor from something that is not a storage")
    shape, strides = _ints(size, "size"), _ints(stride, "stride")
    if len(shape) != len(strides):
        raise CheckpointError(f"data.pkl has a tensor of size {shape} with strides {strides}")
    return _TensorRef(storage, _int(offset, "offset"), shape, strides)


def _rebuild_tensor_v2(
    storage: object,
    offset: object,
    size: object,
    stride: object,
    requires_grad: object = False,
    backward_hooks: object = None,
    metadata: object = None,
) -> _TensorRef:
    if metadata:  # conjugate/negative bits and the like: never in a module's weights
        raise CheckpointError(f"data.pkl has a tensor with metadata {metadata!r}")
    return _rebuild_tensor(storage, offset, size, stride)


def _rebuild_parameter(data: object, *_: object) -> object:
    return data


def _identity(value: object, *_: object) -> object:
    return value


_FUNCTIONS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    # backward hooks and other ordered dicts: plain data
    ("collections", "OrderedDict"): collections.OrderedDict,
    # torch.jit._pickle: how older archives tag typed lists; each returns its argument
    ("torch.jit._pickle", "build_intlist"): _identity,
    ("torch.jit._pickle", "build_doublelist"): _identity,
    ("torch.jit._pickle", "build_boollist"): _identity,
    ("torch.jit._pickle", "build_tensorlist"): _identity,
    ("torch.jit._pickle", "restore_type_tag"): _identity,
}


# -- the class declarations, read as text -----------------------------------------------


@dataclass(frozen=True)
class _ClassInfo:
    is_module: bool
    parameters: tuple[str, ...] = ()
    buffers: tuple[str, ...] = ()
    has_setstate: bool = False


def _declared_names(block: str, attribute: str) -> tuple[str, ...]:
    found = re.search(rf"^\s+{attribute}\s*=\s*\[([^\]]*)\]", block, re.M)
    if found is None:
        return ()
    return tuple(a or b for a, b in _NAMES.findall(found.group(1)))


def parse_classes(source: str) -> dict[str, _ClassInfo]:
    """Class name -> what its declaration says, for one ``code/**.py`` file's text.

    A regular expression over the text: module classes (``class X(Module):``)
    with their ``__parameters__`` / ``__buffers__`` lists, and whether a class
    defines ``__setstate__``. The text is never compiled or run.
    """
    starts = list(_CLASS.finditer(source))
    classes = {}
    for i, start in enumerate(starts):
        end = starts[i + 1].start() if i + 1 < len(starts) else len(source)
        block = source[start.end() : end]
        next_top_level = re.search(r"^\S", block, re.M)  # a function after the class
        if next_top_level is not None:
            block = block[: next_top_level.start()]
        classes[start.group(1)] = _ClassInfo(
            is_module=start.group(2) == "Module",
            parameters=_declared_names(block, "__parameters__"),
            buffers=_declared_names(block, "__buffers__"),
            has_setstate=_SETSTATE.search(block) is not None,
        )
    return classes


# -- the archive ---------------------------------------------------------------------------


@dataclass
class _ArchiveReader:
    path: Path
    archive: zipfile.ZipFile
    mmap: bool = True
    prefix: str = ""
    _names: set[str] = field(default_factory=set)
    _script_classes: dict[str, type[_ScriptObject]] = field(default_factory=dict)
    _storages: dict[str, _StorageRef] = field(default_factory=dict)
    _flat: dict[str, torch.Tensor] = field(default_factory=dict)
    _tensors: dict[int, torch.Tensor] = field(default_factory=dict)
    _code: dict[str, dict[str, _ClassInfo]] = field(default_factory=dict)
    _mapped: torch.UntypedStorage | None = None

    def __post_init__(self) -> None:
        self._names = set(self.archive.namelist())
        prefixes = sorted(
            n[: -len("/data.pkl")]
            for n in self._names
            if n.endswith("/data.pkl") and n.count("/") == 1
        )
        if len(prefixes) != 1:
            old = any(n.endswith("/model.json") for n in self._names)
            raise CheckpointError(
                f"cannot read TorchScript archive {self.path}: "
                + (
                    "it is in the format of torch before 1.5 (model.json), which soundguide "
                    "reads only by running it"
                    if old
                    else "it has no single <folder>/data.pkl, so it is no TorchScript archive"
                ),
                hint=TRUST_HINT if old else None,
            )
        self.prefix = prefixes[0]
        byteorder = self._read_optional("byteorder")
        if byteorder is not None and byteorder.strip() != sys.byteorder.encode():
            raise CheckpointError(
                f"cannot read TorchScript archive {self.path}: it was written on a "
                f"{byteorder.decode(errors='replace').strip()}-endian machine",
                hint=TRUST_HINT,
            )

    def _fail(self, detail: str) -> CheckpointError:
        return CheckpointError(
            f"cannot read TorchScript archive {self.path}: {detail}",
            hint="the file is corrupt or truncated: delete it and download or copy it again",
        )

    def _read_optional(self, name: str) -> bytes | None:
        member = f"{self.prefix}/{name}"
        return self.archive.read(member) if member in self._names else None

    # -- data.pkl ------------------------------------------------------------------
    def unpickle(self) -> Any:
        data = self.archive.read(f"{self.prefix}/data.pkl")
        unpickler = _Unpickler(io.BytesIO(data), self)
        try:
            return unpickler.load()
        except CheckpointError as exc:
            if exc.hint is not None:
                raise
            raise self._fail(str(exc)) from None
        except RecursionError:
            raise self._fail("data.pkl nests too deeply") from None
        except Exception as exc:
            raise self._fail(f"data.pkl is not readable: {type(exc).__name__}: {exc}") from None

    def script_class(self, qualified_name: str) -> type[_ScriptObject]:
        cls = self._script_classes.get(qualified_name)
        if cls is None:
            cls = type("ScriptObject", (_ScriptObject,), {"__slots__": ()})
            cls.qualified_name = qualified_name
            self._script_classes[qualified_name] = cls
        return cls

    def refuse(self, what: str) -> CheckpointError:
        return CheckpointError(
            f"refusing to read TorchScript archive {self.path}: its data.pkl asks for {what}, "
            "which is neither a tensor nor plain data and could run code; "
            "torch.jit.load would run the archive's code",
            hint=TRUST_HINT,
        )

    def storage(self, pid: object) -> _StorageRef:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise self._fail(f"data.pkl has an unknown persistent id {pid!r:.80}")
        _, kind, key, _location, numel = pid
        if not isinstance(kind, _DType) or not isinstance(key, str):
            raise self._fail(f"data.pkl has a storage of unknown type {pid!r:.80}")
        numel = _int(numel, "storage size")
        ref = self._storages.get(key)
        if ref is None:
            ref = self._storages[key] = _StorageRef(key, kind.dtype, numel)
        elif (ref.dtype, ref.numel) != (kind.dtype, numel):
            raise self._fail(f"storage {key!r} is declared twice, differently")
        return ref

    # -- the module tree -----------------------------------------------------------
    def class_info(self, qualified_name: str) -> _ClassInfo:
        qualifier, _, name = qualified_name.rpartition(".")
        if qualifier.startswith("__torch__.torch.classes"):
            return _ClassInfo(is_module=False)  # a C++ class (packed params...): no code file
        if qualifier not in self._code:
            member = f"{self.prefix}/code/{qualifier.replace('.', '/')}.py"
            text = self.archive.read(member) if member in self._names else b""
            self._code[qualifier] = parse_classes(text.decode("utf-8", errors="replace"))
        info = self._code[qualifier].get(name)
        if info is None:
            raise self._fail(
                f"class {qualified_name} is not declared in "
                f"{self.prefix}/code/{qualifier.replace('.', '/')}.py"
            )
        return info

    def module_tensors(self, root: object) -> dict[str, _TensorRef]:
        """Dotted name -> tensor record, in ``torch.jit``'s order: per module its
        parameters, then its buffers, then its submodules'."""
        if (
            not isinstance(root, _ScriptObject)
            or not self.class_info(root.qualified_name).is_module
        ):
            raise self._fail("data.pkl holds no TorchScript module (a plain torch.save file?)")
        found: dict[str, _TensorRef] = {}
        seen: set[int] = set()

        def visit(module: _ScriptObject, prefix: str) -> None:
            if id(module) in seen:
                raise self._fail(f"module {prefix[:-1] or '<root>'} contains itself")
            seen.add(id(module))
            info = self.class_info(module.qualified_name)
            state = getattr(module, "state", None)
            if info.has_setstate or not isinstance(state, dict):
                detail = (
                    "restores its attributes with its own TorchScript code (__setstate__), "
                    "which soundguide does not run"
                    if info.has_setstate
                    else "has no attribute dict"
                )
                raise CheckpointError(
                    f"refusing to read TorchScript archive {self.path}: module "
                    f"{prefix[:-1] or '<root>'} ({module.qualified_name}) {detail}",
                    hint=TRUST_HINT,
                )
            for kind in (info.parameters, info.buffers):
                for name, value in state.items():
                    if name in kind and isinstance(value, _TensorRef):
                        found[prefix + name] = value
            for name, value in state.items():
                if (
                    isinstance(value, _ScriptObject)
                    and self.class_info(value.qualified_name).is_module
                ):
                    visit(value, f"{prefix}{name}.")

        try:
            visit(root, "")
        except RecursionError:
            raise self._fail("its modules nest too deeply") from None
        return found

    # -- storages ------------------------------------------------------------------
    def tensor(self, ref: _TensorRef) -> torch.Tensor:
        built = self._tensors.get(id(ref))
        if built is not None:
            return built
        flat = self._flat_storage(ref.storage)
        if all(ref.size):
            last = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride, strict=True))
            if last >= flat.numel():
                raise self._fail(
                    f"a tensor of size {list(ref.size)} reaches past its storage "
                    f"{ref.storage.key!r} ({flat.numel()} elements)"
                )
        try:
            built = flat.as_strided(ref.size, ref.stride, ref.offset)
        except RuntimeError as exc:
            raise self._fail(f"a tensor does not fit its storage ({exc})") from None
        self._tensors[id(ref)] = built
        return built

    def _flat_storage(self, ref: _StorageRef) -> torch.Tensor:
        flat = self._flat.get(ref.key)
        if flat is not None:
            return flat
        member = f"{self.prefix}/data/{ref.key}"
        try:
            info = self.archive.getinfo(member)
        except KeyError:
            raise self._fail(f"storage {member} is missing") from None
        size = ref.dtype.itemsize
        nbytes = ref.numel * size
        if info.file_size != nbytes:
            raise self._fail(
                f"storage {member} holds {info.file_size} bytes, expected {nbytes} "
                f"({ref.numel} x {ref.dtype})"
            )
        offset = self._data_offset(info) if self.mmap else None
        if nbytes == 0:
            flat = torch.empty(0, dtype=ref.dtype)
        elif offset is not None and offset % size == 0:
            mapped = self._mapped_file()[offset : offset + nbytes]
            flat = torch.empty(0, dtype=torch.uint8).set_(mapped).view(ref.dtype)
        else:
            try:
                raw = bytearray(self.archive.read(member))
            except (zipfile.BadZipFile, OSError, EOFError) as exc:
                raise self._fail(f"storage {member} is unreadable ({exc})") from None
            flat = torch.frombuffer(raw, dtype=ref.dtype)
        self._flat[ref.key] = flat
        return flat

    def _data_offset(self, info: zipfile.ZipInfo) -> int | None:
        """Where an uncompressed member's bytes begin in the file (None: compressed)."""
        if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
            return None
        with open(self.path, "rb") as file:
            file.seek(info.header_offset)
            header = file.read(_LOCAL_HEADER.size)
        if len(header) != _LOCAL_HEADER.size or header[:4] != b"PK\x03\x04":
            raise self._fail(f"the local header of {info.filename} is damaged")
        fields = _LOCAL_HEADER.unpack(header)
        start = info.header_offset + _LOCAL_HEADER.size + fields[9] + fields[10]
        if start + info.file_size > self.path.stat().st_size:
            raise self._fail(f"{info.filename} reaches past the end of the file (truncated?)")
        return start

    def _mapped_file(self) -> torch.UntypedStorage:
        if self._mapped is None:
            size = self.path.stat().st_size
            self._mapped = torch.UntypedStorage.from_file(os.fspath(self.path), False, size)
        return self._mapped


class _Unpickler(pickle.Unpickler):
    """data.pkl's unpickler: ``__torch__`` classes become records, an allowlist for the rest."""

    def __init__(self, file: io.BytesIO, reader: _ArchiveReader) -> None:
        super().__init__(file)
        self._reader = reader

    def find_class(self, module: str, name: str) -> Any:
        if module == "__torch__" or module.startswith("__torch__."):
            return self._reader.script_class(f"{module}.{name}")
        function = _FUNCTIONS.get((module, name))
        if function is not None:
            return _Function(f"{module}.{name}", function)
        if module == "torch" and name in _STORAGE_DTYPES:
            return _DType(_STORAGE_DTYPES[name])
        if module == "torch" and name in _DTYPES:
            return _DType(_DTYPES[name])
        raise self._reader.refuse(f"{module}.{name}")

    def persistent_load(self, pid: object) -> _StorageRef:
        return self._reader.storage(pid)
