"""The README's third-party plugin example works as written."""

from __future__ import annotations

import json
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


def test_plugin_example_runs_offline_and_shares_the_clip_encoder(
    installed_example, tmp_path, monkeypatch, capsys
):
    """The README's module, verbatim, in an edit with the demo's tiny models and a text
    source: one CLIP encoder is built and serves both sources."""
    from soundguide.demo import write_demo_inputs
    from soundguide.encoders.clip import CLIPEncoder

    inputs = tmp_path / "inputs"
    write_demo_inputs(inputs, steps=2)
    loads = []
    real_load = CLIPEncoder.load.__func__

    def counting_load(cls, *args, **kwargs):
        loads.append(args[0])
        return real_load(cls, *args, **kwargs)

    monkeypatch.setattr(CLIPEncoder, "load", classmethod(counting_load))
    usage = textwrap.dedent(block_after("the source is available to every run", "toml"))
    clip = inputs / "clip-tiny.pt"
    config = installed_example / "run.toml"
    config.write_text(
        f"""
[generator]
type = "stylegan2"
checkpoint = "{inputs / "stylegan2-tiny.pt"}"

[[guidance]]
type = "text"
prompt = "a burning forest"
clip_model = "{clip}"
"""
        + usage.replace("weight = -0.2", f'weight = -0.2\nclip_model = "{clip}"')
        + "\n[optimization]\nsteps = 2\n"
    )
    out = tmp_path / "out"
    assert main(["edit", str(config), "--out", str(out), "-q"]) == 0, capsys.readouterr().err
    assert len(loads) == 1  # the text source and the plugin share one encoder
    manifest = json.loads((out / "run.json").read_text())
    assert set(manifest["losses"]["final"]["terms"]) == {"text", "noise"}


def test_clip_space_of_the_defaults_is_the_builtins():
    import soundguide
    from soundguide.core.plugins import load_registries

    registries = load_registries(entry_points=False)
    text = registries.guidances.get("text")
    config = text.Config(prompt="x")
    plugin = text(config, soundguide.RunContext())
    assert plugin.space == soundguide.clip_space() == "clip:ViT-B/32:clip:cutouts=0:float32"


def test_cpu_install_is_one_documented_command():
    import shlex

    install = block_after("## Install and run", "bash")
    cpu = block_after("NVIDIA GPU, take PyTorch's CPU wheels", "bash").strip()
    assert ".venv/bin/pip install -e ." in install
    words = shlex.split(cpu)
    assert words[:4] == [".venv/bin/pip", "install", "-e", "."]
    assert words[words.index("--extra-index-url") + 1] == "https://download.pytorch.org/whl/cpu"
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert "nvidia-" not in pyproject and "+cu" not in pyproject  # nothing pins a CUDA build


def test_demo_rerun_command_is_documented():
    assert "soundguide edit runs/demo/demo-inputs/demo.toml" in README


def test_command_plugin_example_adds_a_command(tmp_path, monkeypatch, capsys):
    """The README's register_commands example, verbatim, as a ``-p`` file."""
    (tmp_path / "hello.py").write_text(block_after("e.g. `hello.py`", "python"))
    monkeypatch.chdir(tmp_path)
    assert main(["-p", "hello", "hello"]) == 0
    assert capsys.readouterr().out == "hello\n"
    assert main(["-p", "hello", "--help"]) == 0
    assert re.search(r"^ +hello +Say hello\.$", capsys.readouterr().out, re.M)
    sys.modules.pop("hello", None)
