"""NVIDIA's network pickles (StyleGAN2-ADA, StyleGAN3), read without running their code.

``network-snapshot-*.pkl`` and ``stylegan3-*.pkl`` are written by NVIDIA's
``training_loop.py`` with plain ``pickle.dump`` of a dict: ``G``, ``D``,
``G_ema``, ``augment_pipe`` and ``training_set_kwargs`` (a ``dnnlib.EasyDict``
or dict). The networks are classes decorated by ``torch_utils.persistence``,
which pickles each object as::

    torch_utils.persistence._reconstruct_persistent_obj(meta)
    meta = {"type": "class", "version": 6, "module_src": "<the whole module's
            source code>", "class_name": "Generator", "state": <the object's
            __dict__>}

Unpickling normally ``exec``-s ``module_src``: any such file runs code. Here
``_reconstruct_persistent_obj`` becomes a function that returns an inert
:class:`PersistentObject` record; the source is kept only as its length and
sha256, never compiled, imported or run. The state is an ``nn.Module``'s
``__dict__``: ``_parameters``, ``_buffers``, ``_modules`` (submodules, themselves
persistent objects), ``_non_persistent_buffers_set``, hook dicts, plain
attributes, and ``_init_args`` / ``_init_kwargs`` (what the decorator saved of
the constructor call). StyleGAN3 layers also keep numpy arrays and scalars.

Tensors inside a ``pickle.dump`` file go through ``Tensor.__reduce_ex__``:
``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad,
hooks)`` (wrapped in ``_rebuild_parameter`` for parameters), whose storage is
``torch.storage._load_from_bytes(blob)``. The blob is a whole legacy-format
``torch.save`` file of that one storage: five pickles (magic number, protocol
1001, system info, the storage as a persistent id ``('storage',
torch.FloatStorage, key, location, numel, view)``, the list of keys) followed by,
per key, the element count as an int64 and the raw bytes. The same layout from
torch 1.x to 2.x. Each blob is read here by the same allow-list.

Everything else is refused with a :class:`~soundguide.core.errors.CheckpointError`
naming the global the file asked for.
"""

from __future__ import annotations

import collections
import hashlib
import io
import os
import pickle
import struct
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from soundguide.core.checkpoints import (
    _LEGACY_MAGIC,
    _ZIP_MAGIC,
    _head,
    _is_html,
    _is_text,
    _text_file,
    names_preview,
)
from soundguide.core.errors import CheckpointError, one_line
from soundguide.core.torchscript import _STORAGE_DTYPES, TRUST_HINT

__all__ = [
    "EasyDict",
    "ModuleRecord",
    "PersistentObject",
    "load_nvidia_network",
    "read_nvidia_pickle",
]

_PERSISTENCE = "torch_utils.persistence"
_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_PROTOCOL_VERSION = 1001
_NUMEL = struct.Struct("<q")
_LEGACY_START = pickle.dumps(_MAGIC_NUMBER, protocol=2)
"""How a legacy ``torch.save`` file begins (protocol 2, torch's default)."""


class EasyDict(dict):
    """What ``dnnlib.EasyDict`` (a dict with attribute access) becomes."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setstate__(self, state: object) -> None:
        # pickle's BUILD after the items: an EasyDict has no attributes of its own
        if isinstance(state, dict):
            self.update(state)


# -- records of modules ---------------------------------------------------------------


@dataclass(eq=False)
class ModuleRecord:
    """An ``nn.Module`` as pickled: its class name and its ``__dict__`` (``state``).

    Nothing of the class is imported; :meth:`state_dict` collects the tensors
    the way ``nn.Module.state_dict()`` would.
    """

    class_name: str
    state: dict[str, Any] = field(repr=False)

    def _table(self, name: str) -> dict[str, Any]:
        table = self.state.get(name, {})
        if not isinstance(table, dict):
            raise CheckpointError(
                f"module {self.class_name} has a {name} that is a {type(table).__name__}, not a dict"
            )
        return table

    def is_module(self) -> bool:
        """Whether the state is that of an ``nn.Module`` (it has ``_parameters`` and ``_modules``)."""
        return isinstance(self.state.get("_parameters"), dict) and isinstance(
            self.state.get("_modules"), dict
        )

    def submodules(self) -> dict[str, ModuleRecord]:
        """Name -> child module, in the order the module registered them."""
        return {k: v for k, v in self._table("_modules").items() if isinstance(v, ModuleRecord)}

    def named_tensors(self, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
        """``nn.Module.state_dict()``'s order: per module its parameters, its persistent
        buffers, then each submodule's; ``None`` entries (no bias) are skipped."""
        if not self.is_module():
            raise CheckpointError(
                f"{prefix[:-1] or self.class_name} ({self.class_name}) is no torch module: "
                f"its state has {names_preview(sorted(map(str, self.state)))}"
            )
        non_persistent = self.state.get("_non_persistent_buffers_set") or set()
        for kind in ("_parameters", "_buffers"):
            for name, value in self._table(kind).items():
                if isinstance(value, torch.Tensor) and not (
                    kind == "_buffers" and name in non_persistent
                ):
                    yield prefix + name, value
        for name, child in self.submodules().items():
            yield from child.named_tensors(f"{prefix}{name}.")

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Dotted name -> tensor, e.g. ``mapping.fc0.weight``, ``synthesis.b4.conv1.weight``."""
        found: dict[str, torch.Tensor] = {}
        try:
            for name, tensor in self.named_tensors():
                found[name] = tensor
        except RecursionError:
            raise CheckpointError(f"module {self.class_name} nests too deeply") from None
        return found


@dataclass(eq=False)
class PersistentObject(ModuleRecord):
    """An object pickled by NVIDIA's ``torch_utils.persistence`` (a network or layer).

    ``init_args`` / ``init_kwargs`` are the constructor's arguments (the
    decorator's ``_init_args`` / ``_init_kwargs``); ``module_name`` is None
    unless the pickle's meta names one (NVIDIA's do not). The embedded source
    is kept as ``source_length`` and ``source_sha256`` only.
    """

    module_name: str | None = None
    version: int | None = None
    source_length: int = 0
    source_sha256: str = ""

    @property
    def init_args(self) -> tuple[Any, ...]:
        args = self.state.get("_init_args", ())
        return tuple(args) if isinstance(args, tuple | list) else ()

    @property
    def init_kwargs(self) -> EasyDict:
        kwargs = self.state.get("_init_kwargs", {})
        return EasyDict(kwargs) if isinstance(kwargs, dict) else EasyDict()

    @property
    def source(self) -> str:
        """``'Generator from 12345 characters of source (sha256 ab12cd34...)'``, for messages."""
        return (
            f"{self.class_name} from {self.source_length} characters of source "
            f"(sha256 {self.source_sha256[:12]}...)"
        )


class _TorchModuleStub:
    """A ``torch.nn.modules`` class as the unpickler hands it out: NEWOBJ makes
    one, BUILD hands it the module's ``__dict__``; then it becomes a ModuleRecord."""

    qualified_name = "torch.nn.Module"

    def __setstate__(self, state: object) -> None:
        self.state = state


def _torch_module_class(qualified_name: str) -> type[_TorchModuleStub]:
    return type("TorchModule", (_TorchModuleStub,), {"qualified_name": qualified_name})


# -- the allow-list ---------------------------------------------------------------------


class _Function:
    """An allowed global, replaced by a local function that builds only data."""

    __slots__ = ("function", "name")

    def __init__(self, name: str, function: Callable[..., Any]) -> None:
        self.name, self.function = name, function

    def __call__(self, *args: Any) -> Any:
        return self.function(*args)

    def __repr__(self) -> str:
        return f"<allowed {self.name}>"


class _Token:
    """A global that is only ever an argument: a storage type, ``numpy.ndarray``."""

    __slots__ = ("name", "value")

    def __init__(self, name: str, value: Any) -> None:
        self.name, self.value = name, value


@dataclass
class _Storage:
    """A storage read from a ``_load_from_bytes`` blob: its elements, flat."""

    flat: torch.Tensor


def _int(value: object, what: str) -> int:
    if type(value) is not int or value < 0:
        raise CheckpointError(f"a tensor's {what} is {one_line(repr(value), 60)}")
    return value


def _ints(value: object, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple | list):
        raise CheckpointError(f"a tensor's {what} is {one_line(repr(value), 60)}")
    return tuple(_int(v, what) for v in value)


def _rebuild_tensor(
    storage: object, offset: object, size: object, stride: object, *_: object
) -> torch.Tensor:
    if not isinstance(storage, _Storage):
        raise CheckpointError("a tensor is rebuilt from something that is not a storage")
    shape, strides, start = _ints(size, "size"), _ints(stride, "stride"), _int(offset, "offset")
    if len(shape) != len(strides):
        raise CheckpointError(f"a tensor of size {list(shape)} has strides {list(strides)}")
    numel = storage.flat.numel()
    if (
        all(shape)
        and start + sum((n - 1) * s for n, s in zip(shape, strides, strict=True)) >= numel
    ):
        raise CheckpointError(
            f"a tensor of size {list(shape)} reaches past its storage ({numel} elements)"
        )
    return storage.flat.as_strided(shape, strides, start)


def _rebuild_tensor_v2(
    storage: object,
    offset: object,
    size: object,
    stride: object,
    requires_grad: object = False,
    backward_hooks: object = None,
    metadata: object = None,
) -> torch.Tensor:
    if metadata:  # conjugate / negative bits: never in a network's weights
        raise CheckpointError(f"a tensor has metadata {one_line(repr(metadata), 60)}")
    return _rebuild_tensor(storage, offset, size, stride)


def _rebuild_parameter(data: object, *_: object) -> object:
    if not isinstance(data, torch.Tensor):
        raise CheckpointError("a parameter is rebuilt from something that is not a tensor")
    return data  # a plain tensor, as in a state dict


def _device(*args: object) -> torch.device:
    if not all(isinstance(a, str | int) for a in args):
        raise CheckpointError(f"a torch.device of {one_line(repr(args), 60)}")
    return torch.device(*args)


def _numpy_dtype(spec: object, align: object = False, copy: object = False) -> np.dtype:
    if not isinstance(spec, str):
        raise CheckpointError(f"a numpy dtype of {one_line(repr(spec), 60)}")
    dtype = np.dtype(spec, align=bool(align), copy=bool(copy))
    if dtype.hasobject:  # object arrays hold pickled Python objects, not numbers
        raise CheckpointError(f"a numpy array of dtype {spec!r} (Python objects)")
    return dtype


def _numpy_reconstruct(subtype: object, shape: object, typecode: object) -> np.ndarray:
    if not (isinstance(subtype, _Token) and subtype.value is np.ndarray):
        raise CheckpointError("a numpy array of a type other than numpy.ndarray")
    return np.ndarray.__new__(np.ndarray, _ints(shape, "numpy shape"), np.dtype(np.uint8))


def _numpy_scalar(dtype: object, data: object = None) -> Any:
    if not isinstance(dtype, np.dtype) or not isinstance(data, bytes):
        raise CheckpointError("a numpy scalar that is not a dtype and its bytes")
    if len(data) != dtype.itemsize:
        raise CheckpointError(f"a numpy {dtype} scalar of {len(data)} bytes")
    return np.frombuffer(data, dtype=dtype)[0].copy()


_COMMON: dict[tuple[str, str], Callable[..., Any]] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    # protocol 2 and 3 (Python 3.7's default) pickle sets through the builtins
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("torch", "Size"): tuple,
    ("torch", "device"): _device,
}
for _module in ("numpy.core.multiarray", "numpy._core.multiarray"):  # numpy 1.x, 2.x
    _COMMON[(_module, "_reconstruct")] = _numpy_reconstruct
    _COMMON[(_module, "scalar")] = _numpy_scalar
_COMMON[("numpy", "dtype")] = _numpy_dtype

_TORCH_DTYPES = {
    name: dtype for name in dir(torch) if isinstance(dtype := getattr(torch, name), torch.dtype)
}


# -- reading ----------------------------------------------------------------------------


class _Refused(Exception):
    def __init__(self, name: str) -> None:
        self.name = name


class _Unpickler(pickle.Unpickler):
    """The allow-list: tensors, plain containers, numpy numbers, persistent records."""

    def __init__(self, file: io.BufferedIOBase, *, storages: bool = False) -> None:
        super().__init__(file)
        self._storages = storages
        self._persistent = _Function(
            f"{_PERSISTENCE}._reconstruct_persistent_obj", _reconstruct_persistent_obj
        )

    def find_class(self, module: str, name: str) -> Any:
        if self._storages:  # inside a _load_from_bytes blob: storage types only
            if module == "torch" and name in _STORAGE_DTYPES:
                return _Token(name, _STORAGE_DTYPES[name])
            raise _Refused(f"{module}.{name}")
        if (module, name) == (_PERSISTENCE, "_reconstruct_persistent_obj"):
            return self._persistent
        if (module, name) == ("torch.storage", "_load_from_bytes"):
            return _Function("torch.storage._load_from_bytes", _load_from_bytes)
        if module in ("dnnlib", "dnnlib.util") and name == "EasyDict":
            return EasyDict
        function = _COMMON.get((module, name))
        if function is not None:
            return _Function(f"{module}.{name}", function)
        if module == "torch" and name in _TORCH_DTYPES:
            return _TORCH_DTYPES[name]
        if (module, name) == ("numpy", "ndarray"):
            return _Token("numpy.ndarray", np.ndarray)
        if module.startswith("torch.nn.modules.") and name.isidentifier():
            return _torch_module_class(f"{module}.{name}")
        raise _Refused(f"{module}.{name}")

    def persistent_load(self, pid: object) -> Any:
        if not self._storages:
            raise CheckpointError(f"it has a persistent id {one_line(repr(pid), 60)}")
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise CheckpointError(f"a storage has an unknown id {one_line(repr(pid), 60)}")
        kind, key, numel = pid[1], pid[2], pid[4]
        view = pid[5] if len(pid) == 6 else None
        if not isinstance(kind, _Token) or not isinstance(key, str):
            raise CheckpointError(f"a storage of unknown type {one_line(repr(pid), 60)}")
        return key, kind.value, _int(numel, "storage size"), view


def _reconstruct_persistent_obj(meta: object) -> PersistentObject:
    """What ``torch_utils.persistence`` hands its meta to: a record, and no ``exec``."""
    if not isinstance(meta, dict):
        raise CheckpointError(f"a persistent object's meta is a {type(meta).__name__}")
    if meta.get("type") != "class":
        raise CheckpointError(f"a persistent object of type {one_line(repr(meta.get('type')), 40)}")
    class_name, source, state = meta.get("class_name"), meta.get("module_src"), meta.get("state")
    if not isinstance(class_name, str) or not isinstance(source, str):
        raise CheckpointError("a persistent object without a class name or source")
    if state is None:
        state = {}
    if not isinstance(state, dict):
        raise CheckpointError(
            f"persistent object {class_name} has a state that is a {type(state).__name__}"
        )
    module_name, version = meta.get("module_name"), meta.get("version")
    return PersistentObject(
        class_name=class_name,
        state=dict(state),
        module_name=module_name if isinstance(module_name, str) else None,
        version=version if isinstance(version, int) else None,
        source_length=len(source),
        source_sha256=hashlib.sha256(source.encode("utf-8", "surrogatepass")).hexdigest(),
    )


def _load_from_bytes(blob: object) -> _Storage:
    """One storage from the legacy ``torch.save`` file that ``Storage.__reduce__`` wrote."""
    if not isinstance(blob, bytes):
        raise CheckpointError("a storage is not given as bytes")
    file = io.BytesIO(blob)

    def part() -> Any:
        return _Unpickler(file, storages=True).load()

    if part() != _MAGIC_NUMBER or part() != _PROTOCOL_VERSION:
        raise CheckpointError("a storage is not in torch's legacy format")
    info = part()
    if not isinstance(info, dict) or info.get("little_endian", True) != (sys.byteorder == "little"):
        raise CheckpointError("a storage was written on a machine of the other byte order")
    root = part()
    keys = part()
    if not (isinstance(root, tuple) and isinstance(keys, list) and keys == [root[0]]):
        raise CheckpointError("a storage blob does not hold exactly one storage")
    key, dtype, numel, view = root
    header = file.read(_NUMEL.size)
    if len(header) != _NUMEL.size:
        raise EOFError
    (count,) = _NUMEL.unpack(header)
    if count != numel:
        raise CheckpointError(f"storage {key} holds {count} elements, expected {numel}")
    nbytes = numel * dtype.itemsize
    raw = bytearray(file.read(nbytes))
    if len(raw) != nbytes:
        raise EOFError
    flat = torch.frombuffer(raw, dtype=dtype) if nbytes else torch.empty(0, dtype=dtype)
    if view is not None:  # torch 1.x: a view of a larger storage, (view key, offset, size)
        if not (isinstance(view, tuple) and len(view) == 3):
            raise CheckpointError(f"a storage view of {one_line(repr(view), 60)}")
        offset, size = _int(view[1], "storage offset"), _int(view[2], "storage size")
        if offset + size > numel:
            raise CheckpointError("a storage view reaches past its storage")
        flat = flat[offset : offset + size].clone()  # as_strided counts from its start
    return _Storage(flat)


def _finish(value: Any, done: dict[int, Any], depth: int = 0) -> Any:
    """Turn the ``torch.nn.modules`` stubs into records, in place (shared objects once)."""
    if id(value) in done:
        return done[id(value)]
    if depth > 200:
        raise RecursionError
    if isinstance(value, _TorchModuleStub):
        state = getattr(value, "state", None)
        record = ModuleRecord(value.qualified_name, state if isinstance(state, dict) else {})
        done[id(value)] = record
        _finish(record, done, depth + 1)
        return record
    if isinstance(value, ModuleRecord | dict | list):
        done[id(value)] = value
        items = value.state if isinstance(value, ModuleRecord) else value
        for k, v in items.items() if isinstance(items, dict) else enumerate(items):
            items[k] = _finish(v, done, depth + 1)
    elif isinstance(value, tuple):
        done[id(value)] = value = tuple(_finish(v, done, depth + 1) for v in value)
    return value


def _check_file(path: Path) -> bytes:
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"checkpoint is a directory, not a file: {path}")
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
    if head.startswith((_ZIP_MAGIC, _LEGACY_START)) or _LEGACY_MAGIC in head[:32]:
        raise CheckpointError(
            f"{path} is a torch.save checkpoint, not an NVIDIA network pickle "
            "(network-snapshot-*.pkl)",
            hint="give it where a state-dict checkpoint is expected",
        )
    if head[:1] != b"\x80":
        if _is_text(head):
            raise _text_file(path, head)
        raise CheckpointError(
            f"{path} is not an NVIDIA network pickle: it is no pickle of protocol 2 or "
            f"later, as NVIDIA's are (it begins {head[:8]!r})"
        )
    return head


def read_nvidia_pickle(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The dict an NVIDIA network pickle holds, with :class:`PersistentObject` records
    in place of the networks (``G``, ``D``, ``G_ema``, ``augment_pipe``).

    No code from the file runs and nothing of NVIDIA's (``torch_utils``,
    ``dnnlib``) is imported. Tensors are on the CPU with ``requires_grad``
    off. Raises :class:`CheckpointError` (one line naming the file) for a file
    that is missing, truncated, no pickle, a ``torch.save`` checkpoint, or that
    asks for anything besides tensors, plain data, numpy numbers and
    persistent objects; a refusal names the global it asked for.
    """
    path = Path(path)
    _check_file(path)
    try:
        with open(path, "rb") as file:
            obj = _finish(_Unpickler(file).load(), {})
    except _Refused as exc:
        raise CheckpointError(
            f"refusing to load {path}: it asks to unpickle {exc.name}, which could run arbitrary code",
            hint=TRUST_HINT,
        ) from None
    except CheckpointError as exc:
        raise CheckpointError(f"cannot read NVIDIA pickle {path}: {exc}", hint=exc.hint) from None
    except (EOFError, pickle.UnpicklingError) as exc:
        truncated = isinstance(exc, EOFError) or "truncated" in str(exc) or "ran out" in str(exc)
        detail = "truncated: an incomplete download or copy" if truncated else "corrupt"
        raise CheckpointError(
            f"NVIDIA pickle {path} is {detail} ({path.stat().st_size} bytes)",
            hint="delete it and download or copy it again",
        ) from None
    except RecursionError:
        raise CheckpointError(f"cannot read NVIDIA pickle {path}: it nests too deeply") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read NVIDIA pickle {path}: {exc}") from None
    except Exception as exc:
        raise CheckpointError(
            f"NVIDIA pickle {path} is corrupt: {type(exc).__name__}: {one_line(exc, 100)}",
            hint="delete it and download or copy it again",
        ) from None
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"{path} holds a {type(obj).__name__}, not the dict of networks that NVIDIA's "
            "training writes (G, D, G_ema, ...)"
        )
    return obj


def load_nvidia_network(path: str | os.PathLike[str], key: str = "G_ema") -> PersistentObject:
    """One network of an NVIDIA pickle (``G_ema`` by default: what NVIDIA's ``gen_images.py`` uses)."""
    snapshot = read_nvidia_pickle(path)
    network = snapshot.get(key)
    if not isinstance(network, PersistentObject):
        what = (
            f"holds no {key}"
            if key not in snapshot
            else f"has a {key} that is no persistent network"
        )
        held = names_preview([str(k) for k in snapshot], 8) or "nothing"
        raise CheckpointError(f"NVIDIA pickle {path} {what}: it holds {held}")
    return network
