"""Process-wide allocator setting for long optimization runs (glibc only).

glibc serves large blocks from their own mappings, returned to the system
when freed, but it raises that threshold each time such a block is freed
(up to 32 MB). After the first step of an edit, activation-sized tensors
then come from the heap, whose freed holes stay resident: at 256 px the
peak grows by about 100 MB over a run. :func:`frugal_malloc` fixes the
threshold, so every large tensor is a fresh mapping that leaves no hole.
The price is that the kernel zeroes those pages on every step: steps take
about 25 % longer on a 2-core CPU.

The ``soundguide edit`` and ``demo`` commands apply it with ``--malloc
frugal``; in Python, call it yourself before a run.

:func:`trim_heap` hands freed heap pages back to the system; the engine calls
it once after loading models and computing targets (reading OpenAI's
TorchScript CLIP files leaves freed blocks in the middle of the heap).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_MMAP_THRESHOLD = -3
"""glibc's ``mallopt`` parameter number (malloc.h)."""

DEFAULT_THRESHOLD = 8 << 20
"""8 MB: activations from 64 px up at 512 channels; smaller blocks reuse the heap."""


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def trim_heap() -> bool:
    """Return free heap memory to the system (glibc ``malloc_trim``); False where unavailable."""
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None) if libc is not None else None
    if trim is None:
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    trim(0)
    return True


def frugal_malloc(threshold: int = DEFAULT_THRESHOLD) -> bool:
    """Serve allocations of ``threshold`` bytes or more from their own mappings.

    Returns True when applied, False where there is no glibc ``mallopt``
    (macOS, Windows, musl) and nothing changed.
    """
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None) if libc is not None else None
    if mallopt is None or threshold < 0:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, threshold))
