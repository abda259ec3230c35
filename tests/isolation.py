"""Run a snippet in a fresh Python process: for what must hold process-wide.

(Imports that must never happen, allocator settings.) Not a test module.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence

GLIBC_PROBE = """
import ctypes
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]

class Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
        "uordblks", "fordblks", "keepcost")]

libc.mallinfo2.restype = Mallinfo2

def mapped(size):
    # does glibc give a fresh block of `size` bytes its own mapping (not the heap)?
    before = libc.mallinfo2().hblkhd
    block = libc.malloc(size)
    grown = libc.mallinfo2().hblkhd - before
    libc.free(block)
    return grown >= size
"""
"""Defines a typed glibc ``libc`` and ``mapped(size)``: whether glibc serves a fresh
block of that size from its own mapping rather than the heap (glibc only)."""


def run_python(code: str, *args: str) -> str:
    """Run ``code`` with ``python -c``; its standard output, stripped (fails on a non-zero exit)."""
    out = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def imported_by(code: str, modules: Sequence[str]) -> list[str]:
    """Which of ``modules`` are in ``sys.modules`` after ``code`` ran in a fresh process."""
    probe = f"\nimport sys\nprint(','.join(m for m in {list(modules)!r} if m in sys.modules))\n"
    found = run_python(code + probe)
    return found.split(",") if found else []
