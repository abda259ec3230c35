"""--malloc: the commands' allocator policies, applied for the run and put back after."""

from __future__ import annotations

import json
import sys

import pytest

from soundguide.cli import main
from soundguide.cli_malloc import POLICIES, malloc_policy
from tests.conftest import TOY_CONFIG
from tests.isolation import GLIBC_PROBE, run_python

PROBE = (
    GLIBC_PROBE
    + """
import json
from soundguide.cli_malloc import malloc_policy

def state():
    # 64 MB is above the highest threshold glibc ever sets on its own (32 MB)
    return {"64MB mapped": mapped(64 << 20)}
"""
)

glibc_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc")


@glibc_only
@pytest.mark.subprocess
def test_reuse_keeps_large_blocks_in_the_heap_and_is_undone():
    out = run_python(
        PROBE
        + """
with malloc_policy("reuse") as applied:
    inside = state()
after = state()
print(json.dumps({"applied": applied, "inside": inside, "after": after}))
"""
    )
    result = json.loads(out)
    assert result["applied"] is True
    assert result["inside"] == {"64MB mapped": False}
    assert result["after"] == {"64MB mapped": True}  # glibc's defaults


@glibc_only
@pytest.mark.subprocess
def test_frugal_maps_large_blocks_even_after_the_threshold_rose():
    # each in a fresh process: a block served from the heap would leave its space there
    raise_threshold = "mapped(20 << 20)  # glibc raises its threshold to 20 MB\n"
    plain = run_python(PROBE + raise_threshold + "print(json.dumps(mapped(16 << 20)))")
    frugal = run_python(
        PROBE
        + raise_threshold
        + """
with malloc_policy("frugal"):
    inside = mapped(16 << 20)
print(json.dumps(inside))
"""
    )
    assert (json.loads(plain), json.loads(frugal)) == (False, True)


@glibc_only
@pytest.mark.subprocess
def test_adaptive_changes_nothing():
    out = run_python(
        PROBE
        + """
with malloc_policy("adaptive") as applied:
    mapped(20 << 20)
    inside = mapped(16 << 20)
print(json.dumps({"applied": applied, "inside": inside}))
"""
    )
    assert json.loads(out) == {"applied": False, "inside": False}


def test_unknown_policy():
    with pytest.raises(ValueError, match="unknown malloc policy 'fast'; available: reuse"):
        with malloc_policy("fast"):
            pass


@pytest.mark.parametrize("command", ["edit", "demo"])
def test_the_commands_apply_the_policy_chosen(command, write_config, tmp_path, monkeypatch):
    import soundguide.cli_malloc

    used = []
    real = soundguide.cli_malloc.malloc_policy

    def spy(name):
        used.append(name)
        return real(name)

    monkeypatch.setattr(soundguide.cli_malloc, "malloc_policy", spy)
    args = (
        ["-p", "tests.toy_plugins", "edit", str(write_config(TOY_CONFIG)), "-q"]
        if command == "edit"
        else ["demo", "--out", str(tmp_path / "demo"), "--steps", "1", "-q"]
    )
    assert main(args) == 0
    assert main([*args[:-1], "-q", "--malloc", "frugal", "--overwrite"]) == 0
    assert used == ["reuse", "frugal"]
    assert main([*args, "--malloc", "bogus"]) == 2  # a usage error, not a silent default
    assert set(POLICIES) == {"reuse", "adaptive", "frugal"}
