from __future__ import annotations

import sys

import pytest

from soundguide.core import memory
from tests.isolation import RSS_PRELUDE, run_python


def test_frugal_malloc_applies_on_glibc_and_large_blocks_leave_no_residue():
    if not sys.platform.startswith("linux"):
        assert memory.frugal_malloc() is False
        return
    # in a child: the setting is process-wide
    code = RSS_PRELUDE + (
        "import sys\n"
        "from soundguide.core.memory import frugal_malloc\n"
        "if sys.argv[1] == 'on':\n"
        "    assert frugal_malloc()\n"
        "# a freed 16 MB block raises glibc's threshold; later 8 MB blocks then come from\n"
        "# the heap and, freed between live blocks, stay resident\n"
        "p = libc.malloc(16 << 20); ctypes.memset(p, 1, 16 << 20); libc.free(p)\n"
        "base = rss()\n"
        "blocks, pins = [], []\n"
        "for _ in range(8):\n"
        "    blocks.append(libc.malloc(8 << 20)); ctypes.memset(blocks[-1], 1, 8 << 20)\n"
        "    pins.append(libc.malloc(1 << 19)); ctypes.memset(pins[-1], 1, 1 << 19)\n"
        "for b in blocks: libc.free(b)\n"
        "print(rss() - base)\n"
    )
    kept = {mode: int(run_python(code, mode)) for mode in ("off", "on")}
    assert kept["on"] < 16 < kept["off"], kept


def test_no_mallopt_means_no_change(monkeypatch):
    monkeypatch.setattr(memory.sys, "platform", "darwin")
    assert memory.frugal_malloc() is False
    assert memory.frugal_malloc(-1) is False


@pytest.mark.parametrize("choice", ["frugal", "adaptive"])
def test_cli_accepts_the_malloc_choice(choice, tmp_path):
    from soundguide.cli import main

    assert main(["edit", str(tmp_path / "missing.toml"), "--malloc", choice]) == 2


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


def test_the_engine_trims_once_after_loading(monkeypatch, registries):
    from soundguide.core import engine
    from tests.core.test_engine import run

    calls = []
    monkeypatch.setattr(engine, "trim_heap", lambda: calls.append(1) or True)
    assert run(registries, steps=3).ok
    assert len(calls) == 1  # per step it would cost more time (re-faulted pages) than it saves
