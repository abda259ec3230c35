"""A library, not a process tuner: an edit leaves the process as it found it.

Each check runs the demo's tiny models (StyleGAN2, CLIP, SoundCLIP: the code
paths that once paged out libraries, tuned malloc and patched
``torch.nn.init``) through ``Editor(...).run()`` and ``soundguide.api.edit``
in a fresh process, and looks at what a notebook would notice afterwards.
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import pytest

from tests.isolation import GLIBC_PROBE, run_python

pytestmark = [
    pytest.mark.subprocess,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc"),
]

PACKAGE = Path(__file__).resolve().parents[1] / "soundguide"

RUN = """
import json, sys, tempfile
from pathlib import Path
import torch
import soundguide
from soundguide.demo import write_demo_inputs
from soundguide.core.config import load_config
from soundguide.core.plugins import load_registries

folder = Path(tempfile.mkdtemp())
config_path = write_demo_inputs(folder / "inputs", steps=2)
registries = load_registries(entry_points=False)
config = load_config(config_path, registries)

def run_both():
    soundguide.Editor(config, registries, progress=False).run()
    soundguide.api.edit(config, out=folder / "out", registries=registries, progress=False)
"""

GLIBC = (
    GLIBC_PROBE
    + """
def dynamic_threshold_works():
    # glibc's default: freeing a mapped 20 MB block raises the mmap threshold to
    # 20 MB (if it is not that high already), so a 16 MB block comes from the heap.
    # A mallopt of M_MMAP_THRESHOLD or M_TRIM_THRESHOLD turns this off for good.
    mapped(20 << 20)
    return not mapped(16 << 20)
"""
)


def test_the_allocator_keeps_glibcs_dynamic_policy():
    out = run_python(
        RUN
        + GLIBC
        + """
run_both()
print(json.dumps({"mapped_64mb": mapped(64 << 20), "dynamic": dynamic_threshold_works()}))
"""
    )
    result = json.loads(out.splitlines()[-1])
    assert result == {"mapped_64mb": True, "dynamic": True}


def test_the_probe_sees_an_allocator_change():
    """The check above fails for the settings the engine used to make."""
    out = run_python(
        GLIBC
        + """
libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
libc.mallopt(-1, 1 << 30)   # M_TRIM_THRESHOLD, as `reuse` did
print(json.dumps({"dynamic": dynamic_threshold_works()}))
""".replace("json.dumps", "__import__('json').dumps")
    )
    assert json.loads(out.splitlines()[-1]) == {"dynamic": False}


SMAPS = """
def library_rss_kib(name):
    total, inside = 0, False
    for line in open("/proc/self/smaps"):
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5 and ":" in fields[3]:
            inside = len(fields) >= 6 and fields[5].endswith(name)
        elif inside and fields[0] == "Rss:":
            total += int(fields[1])
    return total
"""


def test_loaded_libraries_stay_resident():
    """Paged-out library pages would show here (where no other process maps libtorch too)."""
    out = run_python(
        RUN
        + SMAPS
        + """
before = library_rss_kib("libtorch_cpu.so")  # writing the demo's models ran torch
run_both()
after = library_rss_kib("libtorch_cpu.so")
print(json.dumps({"before": before, "after": after}))
"""
    )
    result = json.loads(out.splitlines()[-1])
    assert result["before"] > 20_000  # KiB: the library is mapped and in use
    assert result["after"] >= 0.9 * result["before"], result  # nothing paged out


SPY = """
import ctypes, os
asked = []
_lookup = ctypes.CDLL.__getitem__  # CDLL.__getattr__ looks functions up through it
def _spy(self, name):
    asked.append(name)
    return _lookup(self, name)
ctypes.CDLL.__getitem__ = _spy
def _refuse(*args, **kwargs):
    asked.append("posix_fadvise")
    raise AssertionError("posix_fadvise called")
os.posix_fadvise = _refuse
"""
PROCESS_CALLS = {"madvise", "posix_madvise", "posix_fadvise", "mallopt", "malloc_trim", "mlock"}


def test_no_page_release_or_allocator_call():
    """soundguide reached madvise, mallopt and malloc_trim through ctypes: a spy on
    ctypes' function lookup, installed before soundguide is imported, sees none asked for."""
    out = run_python(
        SPY
        + RUN
        + """
run_both()
print(json.dumps(sorted(set(asked))))
"""
    )
    asked = set(json.loads(out.splitlines()[-1]))
    assert not asked & PROCESS_CALLS, asked


def test_the_spy_sees_a_call():
    out = run_python(
        SPY
        + """
import ctypes, json
libc = ctypes.CDLL("libc.so.6")
libc.malloc_trim(0)
print(json.dumps(sorted(set(asked))))
"""
    )
    assert "malloc_trim" in json.loads(out.splitlines()[-1])


def test_torch_nn_init_is_left_alone():
    out = run_python(
        RUN
        + """
import torch.nn.init as init
before = {name: getattr(init, name) for name in dir(init) if not name.startswith("_")}
run_both()
after = {name: getattr(init, name) for name in dir(init) if not name.startswith("_")}
changed = sorted(name for name in before if after.get(name) is not before[name])
layer = torch.nn.Linear(64, 64)  # a module built afterwards is initialized as usual
print(json.dumps({"changed": changed, "std": float(layer.weight.std())}))
"""
    )
    result = json.loads(out.splitlines()[-1])
    assert result["changed"] == []
    assert 0.02 < result["std"] < 0.2


def test_no_code_assigns_to_torch_modules():
    """No monkeypatching, even for a moment: nothing in the package assigns an attribute
    of a torch module (``torch.nn.init.normal_ = ...``) or calls setattr on one."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, ast.AugAssign | ast.AnnAssign):
                targets = [node.target]
            for target in targets:
                if isinstance(target, ast.Attribute) and _is_torch(target.value):
                    offenders.append(f"{path.name}:{node.lineno}")
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", None) == "setattr"
                and node.args
                and _is_torch(node.args[0])
            ):
                offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == []


def _is_torch(node: ast.AST) -> bool:
    while isinstance(node, ast.Attribute):
        node = node.value
    return isinstance(node, ast.Name) and node.id in ("torch", "init", "nn")
