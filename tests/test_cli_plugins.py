"""Third-party plugins as a user meets them on the command line.

Installed plugins are faked as unpacked distributions (a dist-info folder with
``entry_points.txt``) on ``sys.path``; ``-p`` modules are files in the current
folder. The console script is also run in a subprocess, because only there is
the current folder *not* on ``sys.path`` already (``python -m`` and pytest put
it there).
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from soundguide.cli import main

REPO = Path(__file__).resolve().parents[1]

ECHO_PLUGIN = """
from typing import Literal
import soundguide
from tests.toy_plugins import ToyGenerator, ToyGuidance

class Echo(ToyGuidance):
    class Config(ToyGuidance.Config):
        type: Literal["echo"] = "echo"

class EchoGenerator(ToyGenerator):
    class Config(ToyGenerator.Config):
        type: Literal["echo-gen"] = "echo-gen"

@soundguide.hookimpl
def register_generators(registry):
    registry.add(EchoGenerator)

@soundguide.hookimpl
def register_guidances(registry):
    registry.add(Echo)
"""


@pytest.fixture
def install(tmp_path, monkeypatch):
    """install(dist, module, source): an installed distribution with one entry point.

    Each goes into a folder of its own on sys.path, after the earlier ones, so
    distributions are found (and their plugins registered) in install order.
    """
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delenv("SOUNDGUIDE_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    before = set(sys.modules)
    sites: list[Path] = []

    def install(dist: str, module: str, source: str) -> None:
        site = tmp_path / f"site{len(sites)}"
        site.mkdir()
        (site / f"{module}.py").write_text(textwrap.dedent(source))
        info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(f"[soundguide]\n{dist} = {module}\n")
        sys.path.insert(len(sites), str(site))
        sites.append(site)
        importlib.invalidate_caches()

    yield install
    for name in set(sys.modules) - before:
        if name.startswith("sg_"):
            del sys.modules[name]


def table(out: str) -> list[list[str]]:
    return [line.split() for line in out.splitlines()]


def warnings_in(err: str) -> list[str]:
    lines = err.splitlines()
    assert all(line.startswith(("warning: ", "error: ", "hint: ")) for line in lines), err
    return [line for line in lines if line.startswith("warning: ")]


@pytest.mark.parametrize(
    ("body", "shown"),
    [
        ("import sys\nsys.exit()\n", "SystemExit"),
        ("raise BaseException('bad base')\n", "BaseException: bad base"),
        ("class Abort(BaseException):\n    pass\n\nraise Abort('stop')\n", "Abort: stop"),
    ],
    ids=["sys.exit()", "BaseException", "BaseException-subclass"],
)
def test_plugins_lists_the_rest_when_a_plugin_exits_on_import(install, capsys, body, shown):
    install("sg-echo", "sg_echo_plugin", ECHO_PLUGIN)
    install("sg-exiting", "sg_exiting_plugin", body)
    assert main(["plugins"]) == 0
    out, err = capsys.readouterr()
    assert warnings_in(err) == [
        f"warning: plugin 'sg-exiting' (sg_exiting_plugin, from sg-exiting 1.0) failed to import "
        f"({shown}); skipped"
    ]
    assert ["guidance", "echo", "sg_echo_plugin", "sg-echo", "1.0"] in table(out)
    assert ["guidance", "text", "soundguide.plugins.text", "soundguide", "(built-in)"] in table(out)


def test_plugins_lists_the_rest_when_a_register_hook_exits(install, capsys):
    install(
        "sg-echo",
        "sg_echo_plugin",
        ECHO_PLUGIN.replace("registry.add(Echo)", "raise SystemExit(1)"),
    )
    assert main(["plugins"]) == 0
    out, err = capsys.readouterr()
    assert warnings_in(err) == [
        "warning: plugin 'sg_echo_plugin' (sg-echo 1.0) failed in register_guidances "
        "(SystemExit: 1); skipped"
    ]
    assert not [row for row in table(out) if "sg_echo_plugin" in row]  # not even its generator


def test_duplicate_of_a_builtin_breaks_only_that_plugin(install, capsys, write_config):
    install("sg-text", "sg_text_plugin", ECHO_PLUGIN.replace('"echo"', '"text"'))
    assert main(["plugins"]) == 0
    out, err = capsys.readouterr()
    [warning] = warnings_in(err)
    assert warning.startswith(
        "warning: guidance 'text' is registered twice: by plugin 'soundguide.plugins.text' "
        "(soundguide (built-in)) and by plugin 'sg_text_plugin' (sg-text 1.0); "
        "plugin 'sg_text_plugin' skipped ("
    )
    assert "SOUNDGUIDE_DISABLE_PLUGIN_AUTOLOAD=1" in warning
    assert ["guidance", "text", "soundguide.plugins.text", "soundguide", "(built-in)"] in table(out)
    assert not [row for row in table(out) if "sg_text_plugin" in row]
    # and every other command still runs
    config = write_config(
        '[generator]\ntype = "stylegan2"\npreset = "landscape"\n\n'
        '[[guidance]]\ntype = "text"\nprompt = "fire"\n'
    )
    assert main(["config", "check", str(config)]) == 0
    assert "guidance text@1" in capsys.readouterr().out
    assert main(["weights", "list"]) == 0
    assert "stylegan2-landscape" in capsys.readouterr().out


def test_duplicate_between_installed_plugins_skips_the_later_entirely(install, capsys):
    install("sg-echo", "sg_echo_plugin", ECHO_PLUGIN)
    install("sg-fork", "sg_fork_plugin", ECHO_PLUGIN.replace('"echo-gen"', '"fork-gen"'))
    assert main(["plugins"]) == 0
    out, err = capsys.readouterr()
    assert warnings_in(err) == [
        "warning: guidance 'echo' is registered twice: by plugin 'sg_echo_plugin' (sg-echo 1.0) "
        "and by plugin 'sg_fork_plugin' (sg-fork 1.0); plugin 'sg_fork_plugin' skipped "
        "(to choose, set SOUNDGUIDE_DISABLE_PLUGIN_AUTOLOAD=1 and load the one you want "
        "with -p MODULE)"
    ]
    assert ["guidance", "echo", "sg_echo_plugin", "sg-echo", "1.0"] in table(out)
    assert not [row for row in table(out) if "sg_fork_plugin" in row]  # no fork-gen either


def test_the_hint_works_disable_autoload_and_choose_with_p(install, capsys, monkeypatch):
    install("sg-echo", "sg_echo_plugin", ECHO_PLUGIN)
    install("sg-fork", "sg_fork_plugin", ECHO_PLUGIN.replace('"echo-gen"', '"fork-gen"'))
    monkeypatch.setenv("SOUNDGUIDE_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert main(["-p", "sg_fork_plugin", "plugins"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert ["guidance", "echo", "sg_fork_plugin", "-p"] in table(out)
    assert ["generator", "fork-gen", "sg_fork_plugin", "-p"] in table(out)


def test_duplicate_weights_name_leaves_no_generator_behind(install, capsys):
    install(
        "sg-weights",
        "sg_weights_plugin",
        ECHO_PLUGIN + "\n@soundguide.hookimpl\ndef register_weights(registry):\n"
        "    registry.add(soundguide.KnownWeights('stylegan2-landscape', None, 'x.pt', 'MIT'))\n",
    )
    assert main(["weights", "list"]) == 0
    out, err = capsys.readouterr()
    [warning] = warnings_in(err)
    assert warning.startswith(
        "warning: known weights 'stylegan2-landscape' is registered twice: by plugin "
        "'soundguide.plugins.stylegan2' (soundguide (built-in)) and by plugin "
        "'sg_weights_plugin' (sg-weights 1.0); plugin 'sg_weights_plugin' skipped"
    )
    assert main(["plugins"]) == 0
    assert not [row for row in table(capsys.readouterr().out) if "sg_weights_plugin" in row]


LOCAL_PLUGIN = """
import soundguide

@soundguide.hookimpl
def register_weights(registry):
    registry.add(soundguide.KnownWeights({name!r}, None, "w.pt", "MIT"))
"""


@pytest.fixture
def cwd(tmp_path, monkeypatch):
    """A current folder that is not on sys.path, as under the console script."""
    folder = tmp_path / "cwd"
    folder.mkdir()
    monkeypatch.chdir(folder)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(folder))])
    before = set(sys.modules)
    yield folder
    for name in set(sys.modules) - before:
        if name.startswith("sg_"):
            del sys.modules[name]


def test_p_loads_a_file_and_a_package_from_the_current_folder(cwd, capsys):
    (cwd / "sg_local_plugin.py").write_text(LOCAL_PLUGIN.format(name="sg-local"))
    package = cwd / "sg_local_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("from .hooks import register_weights\n")
    (package / "hooks.py").write_text(LOCAL_PLUGIN.format(name="sg-local-pkg"))
    path = list(sys.path)
    assert main(["-p", "sg_local_plugin", "-p", "sg_local_pkg", "plugins"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert ["weights", "sg-local", "sg_local_plugin", "-p"] in table(out)
    assert ["weights", "sg-local-pkg", "sg_local_pkg", "-p"] in table(out)
    assert sys.path == path  # the current folder was not put on it


def test_installed_module_comes_before_a_file_in_the_current_folder(
    cwd, tmp_path, monkeypatch, capsys
):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sg_twin.py").write_text(LOCAL_PLUGIN.format(name="sg-twin-installed"))
    (cwd / "sg_twin.py").write_text(LOCAL_PLUGIN.format(name="sg-twin-local"))
    monkeypatch.syspath_prepend(str(site))
    assert main(["-p", "sg_twin", "plugins"]) == 0
    out, err = capsys.readouterr()
    assert ["weights", "sg-twin-installed", "sg_twin", "-p"] in table(out)
    assert "sg-twin-local" not in out
    assert warnings_in(err) == [
        f"warning: -p sg_twin: imported 'sg_twin' from {site / 'sg_twin.py'}, not "
        f"{cwd / 'sg_twin.py'} (an installed module of that name comes first; rename the "
        "file to load it)"
    ]


def test_command_line_plugin_that_exits_is_one_error_line(cwd, capsys):
    (cwd / "sg_exit_cli.py").write_text("import sys\nsys.exit('needs a GPU')\n")
    assert main(["-p", "sg_exit_cli", "plugins"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        "error: cannot import plugin module 'sg_exit_cli': SystemExit: needs a GPU",
        "hint: the error comes from the plugin module's own code",
    ]


def test_p_name_found_nowhere_is_one_error_line(cwd, capsys):
    assert main(["-p", "sg_nowhere", "plugins"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: cannot import plugin module 'sg_nowhere': ModuleNotFoundError: "
        "No module named 'sg_nowhere'",
        "hint: -p takes an importable module name, or the name of a .py file or package "
        "folder in the current folder",
    ]


def console_script() -> list[str]:
    script = Path(sys.executable).with_name("soundguide")
    if script.is_file():
        return [str(script)]
    # what the console script does; `python -c` would put the current folder first on sys.path
    return [
        sys.executable,
        "-c",
        "import sys\nif sys.path[0] == '':\n    del sys.path[0]\n"
        "from soundguide.cli import run\nrun()",
    ]


def test_console_script_p_module_in_the_current_folder_shadows_nothing(tmp_path):
    """A ``soundfile.py`` lying in the current folder is not what ``import soundfile`` gets."""
    trap = "raise RuntimeError('the {}.py in the current folder was imported')\n"
    (tmp_path / "soundfile.py").write_text(trap.format("soundfile"))
    (tmp_path / "numpy.py").write_text(trap.format("numpy"))
    (tmp_path / "sg_cwd_plugin.py").write_text(
        "import soundfile  # the plugin's own dependency: the installed package\n"
        + LOCAL_PLUGIN.format(name="sg-cwd").replace("'sg-cwd'", "'sg-cwd-' + soundfile.__name__")
    )
    package = tmp_path / "sg_cwd_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("from .hooks import register_weights\n")
    (package / "hooks.py").write_text(LOCAL_PLUGIN.format(name="sg-cwd-pkg"))
    # this checkout's soundguide; no empty entry, which would mean the current folder
    path = [str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    proc = subprocess.run(
        [*console_script(), "-p", "sg_cwd_plugin", "-p", "sg_cwd_pkg", "plugins"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert (proc.returncode, proc.stderr) == (0, "")
    assert ["weights", "sg-cwd-soundfile", "sg_cwd_plugin", "-p"] in table(proc.stdout)
    assert ["weights", "sg-cwd-pkg", "sg_cwd_pkg", "-p"] in table(proc.stdout)


# -- commands (register_commands) ----------------------------------------------------

COMMAND_PLUGIN = """
from typing import Literal

import click
import soundguide
from tests.toy_plugins import ToyGuidance

class Hello(ToyGuidance):
    class Config(ToyGuidance.Config):
        type: Literal["hello"] = "hello"

@soundguide.hookimpl
def register_guidances(registry):
    registry.add(Hello)

@soundguide.hookimpl
def register_commands(cli):
    @cli.command(name={name!r}, short_help="Say hello to someone.")
    @click.argument("who")
    @click.option("--shout", is_flag=True, help="In capitals.")
    def hello(who, shout):
        '''Say hello to WHO, the way plugins do.'''
        text = "hello " + who
        click.echo(text.upper() if shout else text)
"""


def test_an_installed_plugin_adds_a_command(install, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    install("sg-hello", "sg_hello_plugin", COMMAND_PLUGIN.format(name="hello"))
    assert main(["hello", "you", "--shout"]) == 0
    assert capsys.readouterr().out == "HELLO YOU\n"
    assert main(["--help"]) == 0
    assert ["hello", "Say", "hello", "to", "someone."] in table(capsys.readouterr().out)
    assert main(["hello", "--help"]) == 0
    assert "Say hello to WHO, the way plugins do." in capsys.readouterr().out
    assert main(["plugins"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert ["command", "hello", "sg_hello_plugin", "sg-hello", "1.0"] in table(out)
    assert ["guidance", "hello", "sg_hello_plugin", "sg-hello", "1.0"] in table(out)
    assert ["command", "train", "soundguide.training.plugin", "soundguide", "(built-in)"] in (
        table(out)
    )


@pytest.mark.parametrize(
    ("name", "owner"),
    [("train", "soundguide.training.plugin"), ("edit", "soundguide.cli")],
    ids=["a-plugin-command", "a-command-of-soundguide-itself"],
)
def test_a_command_name_clash_with_a_builtin_skips_the_whole_plugin(install, capsys, name, owner):
    install("sg-clash", "sg_clash_plugin", COMMAND_PLUGIN.format(name=name))
    assert main(["plugins"]) == 0
    out, err = capsys.readouterr()
    [warning] = warnings_in(err)
    assert warning == (
        f"warning: command {name!r} is registered twice: by plugin {owner!r} "
        "(soundguide (built-in)) and by plugin 'sg_clash_plugin' (sg-clash 1.0); plugin "
        "'sg_clash_plugin' skipped (a built-in name cannot be taken over; "
        "SOUNDGUIDE_DISABLE_PLUGIN_AUTOLOAD=1 turns installed plugins off)"
    )
    assert not [row for row in table(out) if "sg_clash_plugin" in row]  # its guidance neither
    # the built-in command is the one that runs
    assert main([name, "--help"]) == 0
    assert "Say hello" not in capsys.readouterr().out


def test_a_failing_register_commands_hook_skips_the_plugin(install, capsys):
    install(
        "sg-broken",
        "sg_broken_plugin",
        COMMAND_PLUGIN.format(name="hello").replace(
            "def register_commands(cli):", "def register_commands(cli):\n    raise SystemExit(3)"
        ),
    )
    assert main(["--help"]) == 0
    out, err = capsys.readouterr()
    assert warnings_in(err) == [
        "warning: plugin 'sg_broken_plugin' (sg-broken 1.0) failed in register_commands "
        "(SystemExit: 3); skipped"
    ]
    assert "hello" not in out and "train" in out
    assert main(["hello", "you"]) == 2


@pytest.mark.parametrize(
    "argv",
    [
        ["-p", "sg_cmd_plugin", "hello", "you"],
        ["hello", "you", "-p", "sg_cmd_plugin"],
        ["hello", "-p", "sg_cmd_plugin", "you"],
        ["--plugin=sg_cmd_plugin", "hello", "you"],
        ["hello", "you", "-psg_cmd_plugin"],
    ],
    ids=["before", "after", "between", "--plugin=", "-pNAME"],
)
def test_a_p_module_adds_a_command_wherever_p_stands(cwd, capsys, argv):
    (cwd / "sg_cmd_plugin.py").write_text(COMMAND_PLUGIN.format(name="hello"))
    assert main(argv) == 0, capsys.readouterr().err
    assert capsys.readouterr().out == "hello you\n"


def test_a_p_module_listed_in_help_and_a_clash_from_p_is_an_error(cwd, capsys):
    (cwd / "sg_cmd_plugin.py").write_text(COMMAND_PLUGIN.format(name="hello"))
    (cwd / "sg_cmd_clash.py").write_text(COMMAND_PLUGIN.format(name="probe"))
    assert main(["-p", "sg_cmd_plugin", "--help"]) == 0
    assert "hello" in capsys.readouterr().out
    assert main(["--help", "-p", "sg_cmd_plugin"]) == 0
    assert "hello" in capsys.readouterr().out
    assert main(["-p", "sg_cmd_clash", "plugins"]) == 2
    assert capsys.readouterr().err.splitlines()[0] == (
        "error: command 'probe' is registered twice: by plugin 'soundguide.evaluation.plugin' "
        "(soundguide (built-in)) and by plugin 'sg_cmd_clash' (-p)"
    )


def test_without_p_the_command_is_unknown(cwd, capsys):
    (cwd / "sg_cmd_plugin.py").write_text(COMMAND_PLUGIN.format(name="hello"))
    assert main(["hello", "you"]) == 2
    assert "No such command 'hello'" in capsys.readouterr().err
