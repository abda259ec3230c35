"""``soundguide app`` as a command, without a browser: the extra, the host warning, cleanup."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from soundguide.app import cli as app_cli
from soundguide.cli import main


@pytest.mark.subprocess
def test_import_and_help_do_not_import_gradio():
    code = (
        "import sys, soundguide; from soundguide.cli import main; "
        "sys.argv = ['soundguide', '--help']\n"
        "try: main(['--help'])\n"
        "finally: print('gradio' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "app  " in done.stdout or re.search(r"\n\s+app\s", done.stdout), done.stdout
    assert done.stdout.strip().endswith("False")


def test_without_the_extra_one_line_and_exit_2(monkeypatch, capsys):
    monkeypatch.setattr(app_cli, "REQUIRED", ("gradio", "no_such_module_for_soundguide"))
    assert main(["app"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (
        "error: the web app needs no_such_module_for_soundguide: pip install 'soundguide[app]'"
    )


def test_other_hosts_get_a_warning_and_the_temporary_folder_goes(monkeypatch, tmp_path, capsys):
    import gradio as gr

    seen = {}

    def launch(self, **options):
        seen.update(options)
        seen["page"] = self

    monkeypatch.setattr(gr.Blocks, "launch", launch)
    code = main(["app", "--host", "0.0.0.0", "--port", "0", "--history", str(tmp_path / "h")])
    assert code == 0
    err = capsys.readouterr().err
    assert "warning: serving on 0.0.0.0: anyone who reaches port 0" in err
    temp = re.search(r"temporary folder: (\S+)", err).group(1)
    assert not Path(temp).exists()
    assert seen["server_name"] == "0.0.0.0"
    assert seen["max_file_size"] == 1024**3
    assert str(tmp_path / "h") in seen["allowed_paths"][0]


def test_localhost_is_the_default(monkeypatch, tmp_path, capsys):
    import gradio as gr

    seen = {}
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **o: seen.update(o))
    assert main(["app", "--history", str(tmp_path / "h")]) == 0
    assert seen["server_name"] == "127.0.0.1" and seen["server_port"] == 7860
    assert "warning" not in capsys.readouterr().err
