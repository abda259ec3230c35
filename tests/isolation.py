"""Run a snippet in a fresh Python process: for what must hold process-wide.

(Imports that must never happen, allocator settings.) Not a test module.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence

RSS_PRELUDE = (
    "import ctypes\n"
    "def rss():\n"
    "    for line in open('/proc/self/status'):\n"
    "        if line.startswith('VmRSS'):\n"
    "            return int(line.split()[1]) // 1024\n"
    "libc = ctypes.CDLL('libc.so.6')\n"
    "libc.malloc.restype = ctypes.c_void_p\n"
    "libc.malloc.argtypes = [ctypes.c_size_t]\n"
    "libc.free.argtypes = [ctypes.c_void_p]\n"
)
"""Defines ``rss()`` (resident MiB) and a typed ``libc`` for malloc/free experiments."""


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
