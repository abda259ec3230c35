from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
import torch

from soundguide.cli import main
from tests.conftest import TOY_CONFIG
from tests.isolation import imported_by

REPO = Path(__file__).resolve().parents[1]


def cli(*args):
    return main(["-p", "tests.toy_plugins", *args])


def test_edit_writes_every_output(write_config, tmp_path, capsys):
    path = write_config(
        TOY_CONFIG.replace('dir = "out"', 'dir = "out"\nsave_every = 6\ngif = true')
    )
    assert cli("edit", str(path), "--device", "cpu", "-q") == 0
    out = tmp_path / "out"
    names = {p.name for p in out.iterdir()}
    assert names == {
        "source.png",
        "edited.png",
        "comparison.png",
        "latent_source.pt",
        "latent_edited.pt",
        "losses.csv",
        "run.json",
        "trajectory.gif",
        "steps",
    }
    assert "finished 12 steps" in capsys.readouterr().out
    assert torch.load(out / "latent_source.pt", weights_only=True).shape == (1, 4, 8)


def test_out_set_and_overwrite(write_config, tmp_path, capsys):
    path = write_config(TOY_CONFIG)
    target = tmp_path / "elsewhere"
    assert cli("edit", str(path), "--out", str(target), "--set", "optimization.steps=2", "-q") == 0
    assert json.loads((target / "run.json").read_text())["steps_done"] == 2
    assert cli("edit", str(path), "--out", str(target), "-q") == 2
    err = capsys.readouterr().err
    assert "error: output folder is not empty" in err and "hint: pass --overwrite" in err
    assert cli("edit", str(path), "--out", str(target), "--overwrite", "-q") == 0


def test_bad_config_exits_2_with_one_line(write_config, capsys):
    path = write_config(TOY_CONFIG.replace("weight = 0.5", "wieght = 0.5"))
    assert cli("edit", str(path)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == (
        f"error: {path}: guidance.1.wieght: extra inputs are not permitted (did you mean 'weight'?)"
    )
    assert err[1].startswith("hint: ")


def test_nonfinite_run_writes_outputs_and_exits_1(write_config, tmp_path, capsys):
    path = write_config(TOY_CONFIG.replace("weight = 1.0", "weight = 1.0\nnan_after = 3"))
    assert cli("edit", str(path), "-q") == 1
    assert "loss became non-finite" in capsys.readouterr().err
    manifest = json.loads((tmp_path / "out" / "run.json").read_text())
    assert manifest["status"] == "nonfinite" and manifest["steps_done"] == 3


def test_config_check_and_show(write_config, capsys):
    path = write_config(TOY_CONFIG)
    assert cli("config", "check", str(path)) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"ok: {path}: generator toy; guidance toy-target@1, toy-target@0.5")
    assert cli("config", "show", str(path), "--set", "optimization.steps=5") == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["optimization"]["steps"] == 5
    assert cli("config", "check", str(path.parent / "missing.toml")) == 2


def test_plugins_table(capsys):
    assert cli("plugins") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["KIND", "NAME", "PLUGIN", "DISTRIBUTION"]
    rows = [line.split(None, 3) for line in lines[1:]]
    assert [
        "regularizer",
        "latent_l2",
        "soundguide.plugins.latent_l2",
        "soundguide (built-in)",
    ] in rows
    assert ["generator", "toy", "tests.toy_plugins", "-p"] in rows


def test_plugin_option_on_the_subcommand(write_config, capsys):
    path = write_config(TOY_CONFIG)
    assert main(["config", "check", str(path), "-p", "tests.toy_plugins"]) == 0


def test_weights_commands(tmp_path, capsys, monkeypatch):
    source = tmp_path / "model.bin"
    source.write_bytes(b"abc" * 100)
    plugin = tmp_path / "weights_plugin_for_test.py"
    plugin.write_text(
        "import soundguide\n"
        "@soundguide.hookimpl\n"
        "def register_weights(registry):\n"
        f"    registry.add(soundguide.KnownWeights('tiny', {source.as_uri()!r}, 'tiny.bin', 'MIT'))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["-p", "weights_plugin_for_test", "weights", "list"]) == 0
    assert "tiny  [not downloaded]  MIT" in capsys.readouterr().out
    assert main(["-p", "weights_plugin_for_test", "weights", "download", "tiny"]) == 0
    assert main(["-p", "weights_plugin_for_test", "weights", "verify"]) == 0
    assert "tiny: ok" in capsys.readouterr().out
    assert main(["-p", "weights_plugin_for_test", "weights", "download", "tinny"]) == 2
    assert "did you mean 'tiny'" in capsys.readouterr().err


@pytest.mark.subprocess
def test_console_script_prints_no_traceback(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[generator\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "soundguide.cli", "config", "check", str(bad)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"error: {bad}: invalid TOML")


@pytest.mark.parametrize("argv", [["edit"], ["nonsense"]])
def test_usage_errors_exit_2(argv, capsys):
    assert main(argv) == 2


def test_zeroshot_bad_layout_exits_2_with_one_line(tmp_path, capsys):
    assert main(["zeroshot", "esc50", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == f"error: dataset metadata not found: {tmp_path / 'meta' / 'esc50.csv'}"


BUILT_IN_COMMANDS = (
    "edit",
    "demo",
    "plugins",
    "config",
    "weights",
    "curate",
    "train",
    "zeroshot",
    "probe",
    "batch",
)


def _all_commands(command, path=()):
    """(path, command) of every command under ``command``, sub-groups included."""
    ctx = click.Context(command, info_name="soundguide")
    for name in command.list_commands(ctx):
        sub = command.get_command(ctx, name)
        yield (*path, name), sub
        if isinstance(sub, click.Group):
            yield from _all_commands(sub, (*path, name))


def test_help_lists_every_command_with_its_whole_short_help(capsys, monkeypatch):
    from soundguide.cli import cli as group

    monkeypatch.setenv("COLUMNS", "80")
    commands = dict(_all_commands(group))
    assert {(name,) for name in BUILT_IN_COMMANDS} <= set(commands)
    for path, command in commands.items():
        assert command.short_help, path
        assert main([*path[:-1], "--help"]) == 0
        lines = capsys.readouterr().out.splitlines()
        # on one line with its name: not cut, not wrapped
        assert any(line.split(None, 1) == [path[-1], command.short_help] for line in lines), (
            path,
            lines,
        )


def test_a_plugin_command_runs_and_shows_its_own_help(capsys):
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Usage: soundguide train [OPTIONS] [STORE] [OUT]")
    assert "--config PATH" in out and "--paper" in out


@pytest.mark.subprocess
def test_help_imports_no_training_or_evaluation_code():
    import pkgutil

    import soundguide.app
    import soundguide.batch
    import soundguide.evaluation
    import soundguide.inversion
    import soundguide.training
    import soundguide.video

    modules = [
        f"{package.__name__}.{info.name}"
        for package in (
            soundguide.training,
            soundguide.evaluation,
            soundguide.inversion,
            soundguide.app,
            soundguide.batch,
            soundguide.video,
        )
        for info in pkgutil.iter_modules(package.__path__)
    ]
    code = (
        "import contextlib, io\n"
        "from soundguide.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert main(['--help']) == 0\n"
    )
    heavy = [
        "sklearn",
        "torch.utils.tensorboard",
        "lpips",
        "dlib",
        "torchvision",
        "gradio",
        "av",
        *modules,
    ]
    assert sorted(imported_by(code, heavy)) == [
        "soundguide.app.plugin",
        "soundguide.batch.plugin",
        "soundguide.evaluation.plugin",
        "soundguide.inversion.lpips",  # VGG16_WEIGHTS, a table entry: imports no lpips
        "soundguide.inversion.plugin",
        "soundguide.training.plugin",
        "soundguide.video.plugin",
    ]
    # the check can fail: running a command does import its code
    code = code.replace("main(['--help'])", "main(['train', '--help'])")
    assert "soundguide.training.cli" in imported_by(code, modules)


def test_curate_of_a_missing_folder_exits_2(tmp_path, capsys):
    assert main(["curate", str(tmp_path / "nope"), str(tmp_path / "store"), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nope" in err.splitlines()[0]
