"""Tensors derived from a module's parameters, built once and kept while the parameters stay.

The fast routes reuse products of the weights from call to call: the
demodulation matrix, Winograd-domain weights, FIR kernels as depthwise
weights in the input's dtype and memory format. They are held here, keyed by
module and name, never as module attributes or state-dict entries.

An entry is used while every source tensor is the same storage as when the
entry was built (held by a weak reference, so a freed storage whose address
comes back does not pass for it), at the same address, version counter (every
in-place update bumps it: ``load_state_dict``, ``weight.mul_()``, optimizer
steps), dtype, device, shape and strides; otherwise it is built again. When a
source storage is freed (``.to()``, ``.double()``, ``.cuda()`` give a
parameter new data and free the old), the entries built from it are dropped
at once, so no derived tensor of the old dtype or device stays behind.

Nothing is kept, and the value is built afresh each call, while gradients
flow to a source (training), under ``torch.inference_mode`` (inference
tensors must not reach later autograd calls) and while ``torch.compile``
traces.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

__all__ = ["clear", "derived", "names"]


class _Entry(NamedTuple):
    storages: tuple[weakref.ref, ...]
    key: tuple[Any, ...]
    value: Any


_ENTRIES: weakref.WeakKeyDictionary[nn.Module, dict[str, _Entry]] = weakref.WeakKeyDictionary()


def _key(sources: Sequence[torch.Tensor], extra: tuple[Any, ...]) -> tuple[Any, ...]:
    return (
        tuple(
            (t.data_ptr(), t._version, t.device, t.dtype, tuple(t.shape), t.stride())
            for t in sources
        ),
        extra,
    )


def derived(
    module: nn.Module,
    name: str,
    sources: Sequence[torch.Tensor],
    build: Callable[[], Any],
    extra: tuple[Any, ...] = (),
) -> Any:
    """``build()``, or what it returned before for ``module`` and ``name`` if still valid.

    ``sources``: the tensors ``build`` reads; ``extra``: whatever else it
    depends on (the input's dtype, a channel count). Built under ``no_grad``.
    """
    if torch.compiler.is_compiling():  # first: dynamo then traces build() alone
        return build()
    if (
        torch.is_grad_enabled() and any(t.requires_grad for t in sources)
    ) or torch.is_inference_mode_enabled():
        return build()
    key = _key(sources, extra)
    entries = _ENTRIES.get(module)
    hit = entries.get(name) if entries is not None else None
    if (
        hit is not None
        and hit.key == key
        and all(ref() is t.untyped_storage() for ref, t in zip(hit.storages, sources, strict=True))
    ):
        return hit.value
    with torch.no_grad():
        value = build()
    drop = _dropper(module, name)
    storages = tuple(weakref.ref(t.untyped_storage(), drop) for t in sources)
    if entries is None:
        entries = _ENTRIES.setdefault(module, {})
    entries[name] = _Entry(storages, key, value)
    return value


def _dropper(module: nn.Module, name: str) -> Callable[[weakref.ref], None]:
    """A weak-reference callback that drops ``module``'s entry ``name`` built on that storage."""
    owner = weakref.ref(module)  # weakly: the cache must not keep the module alive

    def drop(storage: weakref.ref) -> None:
        m = owner()
        entries = _ENTRIES.get(m) if m is not None else None
        entry = entries.get(name) if entries is not None else None
        if entry is not None and any(ref is storage for ref in entry.storages):
            del entries[name]

    return drop


def names(module: nn.Module) -> set[str]:
    """The names of the entries held for ``module``."""
    return set(_ENTRIES.get(module, {}))


def clear(module: nn.Module) -> None:
    """Drop every entry held for ``module`` (they are built again when next asked for)."""
    _ENTRIES.pop(module, None)
