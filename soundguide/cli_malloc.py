"""``--malloc``: glibc allocator policies for the ``edit`` and ``demo`` commands only.

The command owns its process, so it may tune the allocator there; the library
(``import soundguide``, ``Editor``, ``soundguide.api.edit``) never does.
:func:`malloc_policy` applies a policy for the duration of a ``with`` block
and puts glibc's documented defaults back on exit.

- ``reuse`` (the commands' default): ``M_MMAP_MAX = 0`` and ``M_TRIM_THRESHOLD
  = 1 GiB``. Every block comes from the heap and freed memory stays there, so
  each optimization step reuses the blocks of the step before. Without it,
  glibc gives blocks of 32 MB and more (a 128-channel 256 px activation) a
  fresh mapping every time, and the kernel zeroes its pages: at 256 px that
  is several hundred MB of page faults per step. The price is the heap's holes.
- ``adaptive``: glibc's own policy, nothing is changed.
- ``frugal``: ``M_MMAP_THRESHOLD = 8 MB``: large tensors never linger in the
  heap (the least memory, the slowest steps).

The README gives the measured effect of each (``benchmarks/edit_step.py``).
Restoring sets ``M_MMAP_MAX``, ``M_TRIM_THRESHOLD`` and ``M_MMAP_THRESHOLD``
back to glibc's defaults (65536, 128 KiB, 128 KiB) and trims the heap; glibc
has no call that turns its dynamic mmap threshold back on once a threshold
was set, so after a ``reuse`` or ``frugal`` block it stays at the default
value instead of adapting. On other C libraries every policy does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import sys
from collections.abc import Iterator

POLICIES = ("reuse", "adaptive", "frugal")

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
"""glibc's ``mallopt`` parameter numbers (malloc.h)."""

GLIBC_DEFAULTS = {M_MMAP_MAX: 65536, M_TRIM_THRESHOLD: 128 * 1024, M_MMAP_THRESHOLD: 128 * 1024}
"""What glibc starts with (malloc.c: DEFAULT_MMAP_MAX, DEFAULT_TRIM_THRESHOLD,
DEFAULT_MMAP_THRESHOLD)."""

SETTINGS = {
    "reuse": {M_MMAP_MAX: 0, M_TRIM_THRESHOLD: 1 << 30},
    "adaptive": {},
    "frugal": {M_MMAP_THRESHOLD: 8 << 20},
}


@functools.lru_cache(maxsize=1)
def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    libc = ctypes.CDLL(name)
    if not hasattr(libc, "mallopt") or not hasattr(libc, "malloc_trim"):
        return None  # musl and others
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    return libc


@contextlib.contextmanager
def malloc_policy(name: str) -> Iterator[bool]:
    """Apply allocator policy ``name`` inside the block; yields whether it took effect."""
    if name not in POLICIES:
        raise ValueError(f"unknown malloc policy {name!r}; available: {', '.join(POLICIES)}")
    libc = _glibc()
    settings = SETTINGS[name]
    if libc is None or not settings:
        yield False
        return
    changed = [param for param, value in settings.items() if libc.mallopt(param, value) == 1]
    try:
        yield bool(changed)
    finally:
        for param in changed:
            libc.mallopt(param, GLIBC_DEFAULTS[param])
        libc.malloc_trim(0)
