"""The README's third-party plugin example works as written."""

from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path

import pytest

from soundguide.cli import main

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def block_after(marker: str, lang: str) -> str:
    start = README.index(marker)
    match = re.compile(rf"```{lang}\n(.*?)```", re.S).search(README, start)
    assert match is not None
    return match.group(1)


@pytest.fixture
def installed_example(tmp_path, monkeypatch):
    pyproject = block_after("`pyproject.toml`:", "toml")
    module = block_after("`soundguide_noise.py`:", "python")
    entry = re.search(r"\[project\.entry-points\.soundguide\]\n(\w+) = \"(\w+)\"", pyproject)
    assert entry is not None
    (tmp_path / f"{entry.group(2)}.py").write_text(module)
    info = tmp_path / "soundguide_noise-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: soundguide-noise\nVersion: 0.1.0\n"
    )
    (info / "entry_points.txt").write_text(f"[soundguide]\n{entry.group(1)} = {entry.group(2)}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("SOUNDGUIDE_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    yield tmp_path
    sys.modules.pop(entry.group(2), None)


def test_plugin_example_registers_and_validates(installed_example, capsys):
    assert main(["plugins"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert ["guidance", "noise", "soundguide_noise", "soundguide-noise", "0.1.0"] in rows
    config = installed_example / "run.toml"
    usage = block_after("the source is available to every run", "toml")
    config.write_text(
        '[generator]\ntype = "stylegan2"\npreset = "landscape"\n' + textwrap.dedent(usage)
    )
    assert main(["config", "check", str(config)]) == 0
    assert "noise@-0.2" in capsys.readouterr().out
