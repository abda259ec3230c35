from __future__ import annotations

import sys

import pytest

from soundguide.core import memory
from tests.isolation import RSS_PRELUDE, run_python


def off_and_on(policy: str, body: str) -> dict[str, int]:
    """The number ``body`` prints in a fresh process without and with ``memory.<policy>()``.

    In a child: an allocator setting is process-wide.
    """
    code = RSS_PRELUDE + (
        "import sys\n"
        f"from soundguide.core.memory import {policy}\n"
        "if sys.argv[1] == 'on':\n"
        f"    assert {policy}()\n"
    )
    return {mode: int(run_python(code + body, mode)) for mode in ("off", "on")}


def test_frugal_malloc_applies_on_glibc_and_large_blocks_leave_no_residue():
    if not sys.platform.startswith("linux"):
        assert memory.frugal_malloc() is False
        return
    kept = off_and_on(
        "frugal_malloc",
        "# a freed 16 MB block raises glibc's threshold; later 8 MB blocks then come from\n"
        "# the heap and, freed between live blocks, stay resident\n"
        "p = libc.malloc(16 << 20); ctypes.memset(p, 1, 16 << 20); libc.free(p)\n"
        "base = rss()\n"
        "blocks, pins = [], []\n"
        "for _ in range(8):\n"
        "    blocks.append(libc.malloc(8 << 20)); ctypes.memset(blocks[-1], 1, 8 << 20)\n"
        "    pins.append(libc.malloc(1 << 19)); ctypes.memset(pins[-1], 1, 1 << 19)\n"
        "for b in blocks: libc.free(b)\n"
        "print(rss() - base)\n",
    )
    assert kept["on"] < 16 < kept["off"], kept


def test_no_mallopt_means_no_change(monkeypatch):
    monkeypatch.setattr(memory.sys, "platform", "darwin")
    assert memory.frugal_malloc() is False
    assert memory.frugal_malloc(-1) is False


def test_trim_heap_returns_freed_heap_pages():
    if not sys.platform.startswith("linux"):
        assert memory.trim_heap() is False
        return
    code = RSS_PRELUDE + (
        "from soundguide.core.memory import trim_heap\n"
        "blocks, pins = [], []\n"
        "for _ in range(8):  # 64 KB blocks come from the heap; live pins keep it from shrinking\n"
        "    blocks += [libc.malloc(1 << 16) for _ in range(64)]\n"
        "    pins.append(libc.malloc(96 << 10)); ctypes.memset(pins[-1], 1, 96 << 10)\n"
        "for b in blocks: ctypes.memset(b, 1, 1 << 16)\n"
        "for b in blocks: libc.free(b)\n"
        "before = rss()\n"
        "assert trim_heap()\n"
        "print(before - rss())\n"
    )
    assert int(run_python(code)) >= 16  # of the 32 MB freed


@pytest.mark.parametrize(
    ("path", "gpu"),
    [
        ("/v/site-packages/nvidia/cu13/lib/libcublasLt.so.13", True),
        ("/v/site-packages/torch/lib/libtorch_cuda.so", True),
        ("/v/site-packages/torch/lib/libc10_cuda.so", True),
        ("/usr/local/cuda/lib64/libcudnn_ops.so.9", True),
        ("/opt/lib/libnccl.so.2", True),
        ("/v/site-packages/cuda/bindings/driver.cpython-311-x86_64-linux-gnu.so", True),
        ("/v/site-packages/torch/lib/libtorch_cpu.so", False),
        ("/v/site-packages/torch/lib/libc10.so", False),
        ("/usr/lib/x86_64-linux-gnu/libcurl.so.4", False),
        ("/usr/lib/x86_64-linux-gnu/libc.so.6", False),
    ],
)
def test_gpu_libraries_are_told_apart(path, gpu):
    assert bool(memory._GPU_LIBRARY.search(path)) is gpu


def test_release_gpu_libraries_drops_their_pages_and_nothing_else():
    if not sys.platform.startswith("linux"):
        assert memory.release_gpu_libraries() == 0
        return
    code = (
        "import torch\n"
        "from soundguide.core import memory\n"
        "names = [l.split(maxsplit=5)[5] for l in open('/proc/self/maps') if len(l.split()) == 6]\n"
        "if not any(memory._GPU_LIBRARY.search(n) for n in names):\n"
        "    print('none'); raise SystemExit\n"
        "x = torch.randn(64, 64)\n"
        "released = memory.release_gpu_libraries()\n"
        "assert torch.equal(x @ x, x @ x) and x.shape == (64, 64)  # torch still works\n"
        "print(released)\n"
    )
    released = run_python(code)
    if released == "none":
        pytest.skip("this torch build loads no CUDA libraries")
    assert int(released) > 1 << 20


def test_release_gpu_libraries_leaves_an_initialized_cuda_alone(monkeypatch):
    monkeypatch.setattr(memory, "_cuda_initialized", lambda: True)
    assert memory.release_gpu_libraries() == 0


def test_release_libraries_drops_library_pages_and_the_code_still_runs():
    if not sys.platform.startswith("linux"):
        assert memory.release_libraries() == 0
        return
    code = (
        "import numpy, torch\n"
        "from soundguide.core import memory\n"
        "x = torch.randn(64, 64)\n"
        "expected = x @ x\n"
        "released = memory.release_libraries()\n"
        "assert torch.equal(x @ x, expected)  # the code is read back as it runs\n"
        "assert numpy.allclose(numpy.ones(3) @ numpy.ones(3), 3.0)\n"
        "print(released)\n"
    )
    assert int(run_python(code)) > 8 << 20  # libtorch_cpu alone has tens of MB resident


@pytest.mark.parametrize("cuda", [False, True])
def test_release_libraries_spares_the_cuda_libraries_once_cuda_is_initialized(monkeypatch, cuda):
    mapped = [
        (0x1000, 0x3000, "/v/torch/lib/libtorch_cpu.so"),
        (0x3000, 0x5000, "/v/nvidia/cublas/lib/libcublas.so.13"),
        (0x5000, 0x7000, "/usr/lib/x86_64-linux-gnu/libc.so.6"),
        (0x7000, 0x9000, "/v/torch/_C.cpython-311-x86_64-linux-gnu.so"),
        (0x9000, 0xB000, "/data/clip.pt"),  # a mapped checkpoint: release_pages' business
        (0xB000, 0xD000, "/usr/lib/locale/C.utf8/LC_CTYPE"),
    ]
    advised = []
    monkeypatch.setattr(memory, "_mapped_files", lambda: mapped)
    monkeypatch.setattr(memory, "_madvise", lambda libc: lambda a, n, how: advised.append(a) or 0)
    monkeypatch.setattr(memory, "_resident_file_kb", lambda: 100)
    monkeypatch.setattr(memory, "_cuda_initialized", lambda: cuda)
    memory.release_libraries()
    assert advised == ([0x1000, 0x5000, 0x7000] if cuda else [0x1000, 0x3000, 0x5000, 0x7000])


def test_release_pages_drops_a_mapped_file_and_never_touches_anonymous_memory(tmp_path):
    if not sys.platform.startswith("linux"):
        pytest.skip("madvise is Linux-only")
    path = tmp_path / "weights.bin"
    path.write_bytes(bytes(range(256)) * (32 << 12))  # 32 MiB
    code = (
        "import sys, torch\n"
        "from soundguide.core import memory\n"
        "def file_mib():\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith('RssFile'):\n"
        "            return int(line.split()[1]) // 1024\n"
        "n = 32 << 20\n"
        "mapped = torch.from_file(sys.argv[1], shared=False, size=n, dtype=torch.uint8)\n"
        "total = int(mapped.sum(dtype=torch.int64))  # every page read\n"
        "before = file_mib()\n"
        "assert memory.release_pages(mapped, memory.file_mappings())\n"
        "after = file_mib()\n"
        "assert int(mapped.sum(dtype=torch.int64)) == total  # read back from the file\n"
        "anon = torch.arange(n // 4, dtype=torch.int32)\n"
        "assert not memory.release_pages(anon, memory.file_mappings())\n"
        "assert torch.equal(anon[-3:], torch.tensor([n // 4 - 3, n // 4 - 2, n // 4 - 1], dtype=torch.int32))\n"
        "print(before - after)\n"
    )
    assert int(run_python(code, str(path))) >= 24


def test_reusing_malloc_keeps_large_blocks_for_the_next_step():
    if not sys.platform.startswith("linux"):
        assert memory.reusing_malloc() is False
        return
    faults = off_and_on(
        "reusing_malloc",
        "import resource\n"
        "n = 40 << 20  # above glibc's largest threshold: otherwise always a fresh mapping\n"
        "def step():\n"
        "    p = libc.malloc(n); ctypes.memset(p, 1, n); libc.free(p)\n"
        "step()\n"
        "faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "step()\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)\n",
    )
    assert faults["on"] < 500 < 5000 < faults["off"], faults  # 40 MiB is 10240 pages


def test_no_mallopt_means_no_reuse_either(monkeypatch):
    monkeypatch.setattr(memory.sys, "platform", "darwin")
    assert memory.reusing_malloc() is False
    assert memory.release_gpu_libraries() == 0
    assert memory.release_libraries() == 0
