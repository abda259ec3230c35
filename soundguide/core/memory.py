"""Process memory for long optimization runs on a CPU (Linux, glibc).

Allocator policies (``Editor(malloc=...)``, ``--malloc``), all process-wide:

- ``reuse`` (:func:`reusing_malloc`, the CLI's default): after loading,
  every block comes from the heap and freed memory stays there, so each
  step reuses the previous step's blocks. glibc otherwise gives blocks of
  32 MB and more (a 128-channel 256 px activation) a fresh mapping every
  time, whose pages the kernel must zero: at 256 px that is about 600 MB of
  page faults per step, a quarter of the step on a 2-core CPU. The price is
  the heap's holes, 100-200 MB at 256 px.
- ``adaptive``: glibc's own policy (blocks below a threshold that rises
  to 32 MB come from the heap).
- ``frugal`` (:func:`frugal_malloc`): the threshold fixed at 8 MB, so large
  tensors never linger in the heap; the least memory and the slowest steps.

:func:`trim_heap` hands freed heap pages back; the engine calls it once
after loading models and computing targets. :func:`release_gpu_libraries`
drops the pages of CUDA libraries that ``import torch`` touched (about 290
MB with the CUDA wheels), which a CPU run never uses; the engine calls it
before loading on a CPU. :func:`release_libraries` drops the pages of all
loaded libraries, of which an edit step reads back about a tenth; the
engine calls it on a CPU once loading is done. :func:`release_pages` lets
the pages of a memory-mapped checkpoint go as soon as its weights are copied.
"""

from __future__ import annotations

import bisect
import ctypes
import ctypes.util
import functools
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
"""glibc's ``mallopt`` parameter numbers (malloc.h)."""

MADV_PAGEOUT = 21
"""Linux ``madvise`` advice (5.4+): reclaim these pages now (clean file pages are dropped)."""

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

MALLOC_POLICIES = ("adaptive", "reuse", "frugal")
"""Allocator policies of ``Editor(malloc=...)`` and ``--malloc`` (see the module docstring)."""

KEEP_FREED = 1 << 30
"""Heap memory freed at the top of the heap that :func:`reusing_malloc` keeps (1 GiB)."""

_GPU_LIBRARY = re.compile(
    r"/nvidia/|/cuda/bindings/|/lib(?:torch_cuda|torch_nvshmem|c10_cuda|caffe2_nvrtc|cudart|cublas"
    r"|cudnn|cufft|curand|cusolver|cusparse|cupti|cufile|nvrtc|nvJitLink|nvToolsExt|nvshmem|nccl)"
    r"[^/]*\.so"
)
"""Mapped files that only GPU work uses: CUDA runtime, cuBLAS, cuDNN, NCCL, NVRTC, ... and their bindings."""

_SHARED_OBJECT = re.compile(r"\.so(?:\.[0-9][0-9.]*)?$")
"""A shared library's file name: ``libc.so.6``, ``libtorch_cpu.so``, ``_C.cpython-311-x86_64-linux-gnu.so``."""

DEFAULT_THRESHOLD = 8 << 20
"""8 MB: activations from 64 px up at 512 channels; smaller blocks reuse the heap."""


def _libc() -> ctypes.CDLL | None:
    return _load_libc() if sys.platform.startswith("linux") else None


@functools.cache
def _load_libc() -> ctypes.CDLL | None:
    # once: find_library runs ldconfig, and release_pages is called per tensor
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


def _mallopt(libc: ctypes.CDLL | None) -> Any:
    mallopt = getattr(libc, "mallopt", None) if libc is not None else None
    if mallopt is not None:
        mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        mallopt.restype = ctypes.c_int
    return mallopt


def _madvise(libc: ctypes.CDLL | None) -> Any:
    madvise = getattr(libc, "madvise", None) if libc is not None else None
    if madvise is not None:
        madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        madvise.restype = ctypes.c_int
    return madvise


def _mapped_files() -> list[tuple[int, int, str]]:
    """(start, end, path) of every memory-mapped file in /proc/self/maps; [] where unreadable."""
    found = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and fields[5].startswith("/"):
                    start, end = fields[0].split("-")
                    found.append((int(start, 16), int(end, 16), fields[5].rstrip("\n")))
    except OSError:
        return []
    return found


def frugal_malloc(threshold: int = DEFAULT_THRESHOLD) -> bool:
    """Serve allocations of ``threshold`` bytes or more from their own mappings.

    Returns True when applied, False where there is no glibc ``mallopt``
    (macOS, Windows, musl) and nothing changed.
    """
    mallopt = _mallopt(_libc())
    if mallopt is None or threshold < 0:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, threshold))


def reusing_malloc(keep: int = KEEP_FREED) -> bool:
    """Serve every block from the heap and keep up to ``keep`` freed bytes for reuse.

    The fastest setting for an optimization loop: after the first step no
    page is faulted in again (glibc otherwise maps blocks of 32 MB and more
    afresh, and the kernel zeroes them, on every step). The price is the
    heap's holes: the peak grows by 100-200 MB at 256 px. Returns True
    when applied, False where there is no glibc ``mallopt``.
    """
    mallopt = _mallopt(_libc())
    if mallopt is None or keep < 0:
        return False
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, keep))


def _resident_file_kb() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssFile:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _page_out_libraries(chosen: Callable[[str], bool]) -> int:
    """``madvise(MADV_PAGEOUT)`` over the mapped shared libraries ``chosen`` picks; bytes of file memory released."""
    madvise = _madvise(_libc())
    before = _resident_file_kb()
    if madvise is None or before is None:
        return 0
    for start, end, path in _mapped_files():
        if _SHARED_OBJECT.search(path) and chosen(path):
            madvise(start, end - start, MADV_PAGEOUT)  # a hint: failure changes nothing
    after = _resident_file_kb()
    return max(0, before - after) * 1024 if after is not None else 0


def release_gpu_libraries() -> int:
    """Hand back the pages of CUDA libraries that a CPU-only process never uses again.

    ``import torch`` of a CUDA build loads cuBLAS, NVRTC, nvJitLink, cuDNN,
    ... and their static initializers touch about 290 MB of them, which then
    count in the process's resident memory for good. This asks the kernel
    (``madvise(MADV_PAGEOUT)``) to drop those pages: they are clean pages
    of files, so nothing is lost, and a page that is used again is simply
    read back. Pages that another process maps too (a second torch process)
    stay resident. Does nothing once CUDA is initialized. Returns the bytes of
    resident file memory released (0 where unsupported: not Linux, a kernel
    before 5.4, or no CUDA libraries loaded).
    """
    if _cuda_initialized():
        return 0
    return _page_out_libraries(lambda path: bool(_GPU_LIBRARY.search(path)))


def release_libraries() -> int:
    """Hand back the pages of every loaded shared library; they come back as they are used.

    Imports, loading and the first forward pass run code that a long loop
    never runs again (operator registration, checkpoint readers, Python
    extensions used once), and its pages stay resident: 50-110 MB of
    ``libtorch_cpu`` and friends after loading a model, against about 10 MB
    that an edit step uses. This drops them all (``madvise(MADV_PAGEOUT)``,
    clean file pages only, so nothing is lost); the pages that are used again
    are read back, once. The CUDA libraries are left alone once CUDA is
    initialized. Returns the bytes of resident file memory released (0 where
    unsupported).
    """
    keep_gpu = _cuda_initialized()
    return _page_out_libraries(lambda path: not (keep_gpu and _GPU_LIBRARY.search(path)))


def file_mappings() -> list[tuple[int, int]]:
    """Address ranges (start, end) of this process's memory-mapped files, sorted; [] off Linux."""
    return sorted((start, end) for start, end, _ in _mapped_files())


def release_pages(tensor: object, mappings: Sequence[tuple[int, int]]) -> bool:
    """Let the kernel reclaim the file pages of a tensor memory-mapped from a file.

    For weights just copied out of ``torch.load(mmap=True)``: their pages
    leave the resident set at once, not when the whole file is unmapped.
    Acts only on a tensor inside one of ``mappings`` (see
    :func:`file_mappings`), never on anonymous memory, and only as a hint
    (``MADV_PAGEOUT``): data is never lost. Returns whether it asked.
    """
    madvise = _madvise(_libc())
    try:
        storage = tensor.untyped_storage()  # type: ignore[attr-defined]
        start, size = storage.data_ptr(), storage.nbytes()
    except (AttributeError, RuntimeError):
        return False
    if madvise is None or storage.device.type != "cpu" or size == 0:
        return False
    i = bisect.bisect_right(mappings, (start, float("inf"))) - 1
    if i < 0 or not mappings[i][0] <= start < start + size <= mappings[i][1]:
        return False
    first = -(-start // _PAGE_SIZE) * _PAGE_SIZE  # whole pages inside the storage only
    last = (start + size) // _PAGE_SIZE * _PAGE_SIZE
    if last <= first:
        return False
    return madvise(first, last - first, MADV_PAGEOUT) == 0


def _cuda_initialized() -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and bool(torch.cuda.is_initialized())
