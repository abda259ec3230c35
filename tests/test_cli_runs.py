"""A run never loses, mixes or deletes results: the CLI under faults.

Unwritable and locked folders, a disk that fills up mid-run, SIGTERM and
Ctrl-C (once and twice), failures before the first step, a latent that goes
non-finite in the last update, and what ``run.json`` / ``losses.csv`` hold.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from soundguide.cli import main
from soundguide.core import outputs
from soundguide.core.runfolder import LOCK_NAME, RunFolder
from tests import toy_plugins
from tests.conftest import TOY_CONFIG

REPO = Path(__file__).resolve().parents[1]


def cli(*args):
    return main(["-p", "tests.toy_plugins", *args])


def strict_json(path: Path):
    def refuse(name):
        raise ValueError(f"bare {name} in {path}")

    return json.loads(path.read_text(), parse_constant=refuse)


# -- the folder is checked before anything is loaded ------------------------------------


def test_unwritable_output_is_found_before_loading(write_config, capsys):
    if not Path("/sys/kernel").is_dir():
        pytest.skip("no /sys/kernel here")
    path = write_config(TOY_CONFIG)
    assert cli("edit", str(path), "--out", "/sys/kernel", "--overwrite", "-q") == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("error: cannot write to output folder /sys/kernel")
    assert err[1].startswith("hint: ")
    assert toy_plugins.CALLS["generator.build"] == 0


def test_out_that_is_a_file(write_config, tmp_path, capsys):
    path = write_config(TOY_CONFIG)
    (tmp_path / "file").write_text("x")
    assert cli("edit", str(path), "--out", str(tmp_path / "file"), "-q") == 2
    assert "exists and is not a folder" in capsys.readouterr().err
    assert toy_plugins.CALLS["generator.build"] == 0


def test_second_run_into_the_same_folder_is_refused_at_once(write_config, tmp_path, capsys):
    path = write_config(TOY_CONFIG)
    with RunFolder(tmp_path / "busy"):
        assert cli("edit", str(path), "--out", str(tmp_path / "busy"), "--overwrite", "-q") == 2
    err = capsys.readouterr().err
    assert f"error: another soundguide run (pid {os.getpid()}" in err
    assert toy_plugins.CALLS["generator.build"] == 0
    assert cli("edit", str(path), "--out", str(tmp_path / "busy"), "-q") == 0  # free again
    assert not (tmp_path / "busy" / LOCK_NAME).exists()


def test_out_with_a_tilde_is_expanded(write_config, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    path = write_config(TOY_CONFIG.replace("steps = 12", "steps = 2"))
    assert cli("edit", str(path), "--out", "~/tilde-out", "-q") == 0
    assert (tmp_path / "tilde-out" / "run.json").is_file()
    assert not Path("~").exists()


# -- nothing left behind when nothing was done ---------------------------------------


def test_failure_before_the_first_step_leaves_no_folder(write_config, tmp_path, capsys):
    path = write_config(
        TOY_CONFIG.replace(
            "[[regularizer]]",
            '[[guidance]]\ntype = "audio"\npath = "missing.wav"\n\n[[regularizer]]',
        )
    )
    out = tmp_path / "new" / "nested" / "out"
    assert cli("edit", str(path), "--out", str(out), "-q") == 2
    assert "missing.wav" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_failure_before_the_first_step_keeps_an_existing_folder(write_config, tmp_path):
    path = write_config(
        TOY_CONFIG.replace(
            "[[regularizer]]",
            '[[guidance]]\ntype = "audio"\npath = "missing.wav"\n\n[[regularizer]]',
        )
    )
    (tmp_path / "existing").mkdir()
    assert cli("edit", str(path), "--out", str(tmp_path / "existing"), "-q") == 2
    assert (tmp_path / "existing").is_dir() and not any((tmp_path / "existing").iterdir())


# -- a full disk in the middle of a run -----------------------------------------------


def test_disk_full_mid_run_keeps_what_was_written(write_config, tmp_path, capsys, monkeypatch):
    path = write_config(
        TOY_CONFIG.replace("steps = 12", "steps = 40").replace(
            'dir = "out"', 'dir = "out"\nsave_every = 1'
        )
    )
    real_save_png = outputs.save_png

    def save_png(target, picture):
        # the disk fills up while step 5's picture is written; tensors still fit
        if Path(target).name >= "00005.png" or Path(target).parent.name != "steps":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save_png(target, picture)

    monkeypatch.setattr(outputs, "save_png", save_png)
    assert cli("edit", str(path), "-q") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[0].startswith("error: could not write ")
    assert "No space left on device" in err[0] and "edited.png" in err[0]
    assert "kept: " in err[0] and "latent_edited.pt" in err[0]
    out = tmp_path / "out"
    manifest = strict_json(out / "run.json")
    assert (
        manifest["status"] == "failed" and "could not write steps/00005.png" in manifest["message"]
    )
    assert 5 <= manifest["steps_done"] < 40  # stopped between two steps, soon after
    assert set(manifest["missing"]) >= {"edited.png", "source.png", "comparison.png"}
    edited = torch.load(out / "latent_edited.pt", weights_only=True)
    assert torch.isfinite(edited).all()
    kept_steps = sorted(p.name for p in (out / "steps").iterdir())
    assert kept_steps[:2] == ["00000.png", "00000.pt"] and "00004.png" in kept_steps
    assert not (out / LOCK_NAME).exists()


def test_every_write_failing_still_ends_in_one_line(write_config, tmp_path, capsys, monkeypatch):
    path = write_config(TOY_CONFIG.replace("steps = 12", "steps = 3"))

    def broken(*_args, **_kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(outputs, "atomic_write", broken)
    monkeypatch.setattr(outputs, "atomic_write_text", broken)
    assert cli("edit", str(path), "-q") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("error: could not write latent_edited.pt")
    assert "kept: losses.csv" in err[0] and len(err) == 2


# -- non-finite at the very end ---------------------------------------------------------


def test_nonfinite_latent_after_the_last_update(write_config, tmp_path, capsys):
    path = write_config(
        TOY_CONFIG.replace("steps = 12", "steps = 5").replace(
            "[optimization]", '[[regularizer]]\ntype = "poison"\nat = 5\n\n[optimization]'
        )
    )
    assert cli("edit", str(path), "-q") == 1
    assert "non-finite in the last update" in capsys.readouterr().err
    out = tmp_path / "out"
    manifest = strict_json(out / "run.json")
    assert manifest["status"] == "nonfinite"
    assert manifest["steps_done"] == 5 and manifest["edited_step"] == 4
    assert manifest["losses"]["final"]["step"] == 4
    edited = torch.load(out / "latent_edited.pt", weights_only=True)
    assert torch.isfinite(edited).all()
    for name in ("edited.png", "comparison.png", "source.png", "latent_source.pt"):
        assert (out / name).is_file()


def test_run_json_is_strict_json_when_losses_are_nan(write_config, tmp_path):
    path = write_config(TOY_CONFIG.replace("weight = 1.0", "weight = 1.0\nnan_after = 0"))
    assert cli("edit", str(path), "-q") == 1
    manifest = strict_json(tmp_path / "out" / "run.json")
    assert manifest["status"] == "nonfinite"
    assert manifest["losses"]["first"]["total_sum"] is None  # NaN written as null


# -- what run.json and losses.csv record ------------------------------------------------


def test_run_json_records_the_folder_actually_used(write_config, tmp_path):
    path = write_config(TOY_CONFIG.replace("steps = 12", "steps = 2"))
    target = tmp_path / "elsewhere"
    assert cli("edit", str(path), "--out", str(target), "-q") == 0
    manifest = strict_json(target / "run.json")
    assert manifest["output_dir"] == str(target.resolve())
    assert manifest["config"]["output"]["dir"] == str(target.resolve())


def test_long_runs_keep_run_json_small(write_config, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["soundguide", "edit"])  # run.json records the command
    sizes = {}
    for steps in (10, 2000):
        path = write_config(TOY_CONFIG.replace("steps = 12", f"steps = {steps}"))
        out = tmp_path / f"out{steps}"
        assert cli("edit", str(path), "--out", str(out), "-q") == 0
        sizes[steps] = (out / "run.json").stat().st_size
        rows = (out / "losses.csv").read_text().splitlines()
        assert len(rows) == 1 + steps + 1  # header, one row per step, the final latent
    assert sizes[2000] - sizes[10] < 200  # run.json does not grow with the steps
    assert sizes[2000] < 16_000
    last = rows[-1].split(",")
    assert last[0] == "2000" and last[2] == ""  # the final latent: no update follows


def test_losses_csv_has_one_row_per_item(write_config, tmp_path):
    path = write_config(TOY_CONFIG.replace("seed = 7", "seed = [7, 8, 9]").replace("12", "2"))
    assert cli("edit", str(path), "-q") == 0
    rows = [r.split(",") for r in (tmp_path / "out" / "losses.csv").read_text().splitlines()]
    assert [r[:2] for r in rows[1:4]] == [["0", "0"], ["0", "1"], ["0", "2"]]
    assert float(rows[1][2]) == 0.0  # the first update's learning rate


def test_outputs_follow_the_umask(write_config, tmp_path):
    path = write_config(
        TOY_CONFIG.replace("steps = 12", "steps = 2").replace(
            'dir = "out"', 'dir = "out"\nsave_every = 1\ngif = true'
        )
    )
    previous = os.umask(0o022)
    try:
        assert cli("edit", str(path), "-q") == 0
    finally:
        os.umask(previous)
    out = tmp_path / "out"
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) > 8
    for file in files:
        assert file.stat().st_mode & 0o777 == 0o644, file


# -- signals: SIGTERM and Ctrl-C stop between steps and write what exists ---------------


def _slow_config(write_config, tmp_path, *, load=0.0, steps=400):
    return write_config(
        TOY_CONFIG.replace("steps = 12", f"steps = {steps}")
        .replace('type = "toy"', f'type = "toy"\nstep_seconds = 0.05\nload_seconds = {load}')
        .replace('dir = "out"', f'dir = "{tmp_path / "out"}"\nsave_every = 1')
    )


def _start(*args):
    return subprocess.Popen(
        [sys.executable, "-m", "soundguide.cli", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(path: Path, child, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if child.poll() is not None:
            raise AssertionError(f"child ended early: {child.communicate()}")
        if time.monotonic() > deadline:
            child.kill()
            raise AssertionError(f"{path} never appeared")
        time.sleep(0.02)


@pytest.mark.parametrize(
    ("signals", "code"),
    [([signal.SIGTERM], 143), ([signal.SIGINT], 130), ([signal.SIGINT, signal.SIGINT], 130)],
    ids=["sigterm", "ctrl-c", "ctrl-c-twice"],
)
@pytest.mark.subprocess
def test_signal_stops_between_steps_and_writes_everything(write_config, tmp_path, signals, code):
    path = _slow_config(write_config, tmp_path)
    child = _start("-p", "tests.toy_plugins", "edit", str(path), "-q")
    out = tmp_path / "out"
    _wait_for(out / "steps" / "00003.png", child)
    for sig in signals:
        child.send_signal(sig)
        time.sleep(0.01)
    _, err = child.communicate(timeout=60)
    assert child.returncode == code, err
    assert "Traceback" not in err
    manifest = strict_json(out / "run.json")
    assert manifest["status"] == "interrupted"
    done = manifest["steps_done"]
    assert 3 <= done < 400
    edited = torch.load(out / "latent_edited.pt", weights_only=True)
    last_saved = torch.load(out / "steps" / f"{done:05d}.pt", weights_only=True)
    assert torch.equal(edited, last_saved)  # the final latent is the last completed step
    for name in ("edited.png", "source.png", "comparison.png", "latent_source.pt", "losses.csv"):
        assert (out / name).is_file(), name
    assert not (out / LOCK_NAME).exists()


@pytest.mark.subprocess
def test_ctrl_c_while_loading_leaves_nothing(write_config, tmp_path):
    path = _slow_config(write_config, tmp_path, load=30.0)
    child = _start("-p", "tests.toy_plugins", "edit", str(path), "-q")
    out = tmp_path / "out"
    _wait_for(out / LOCK_NAME, child)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=20)
    assert child.returncode == 130, err
    assert "Traceback" not in err and "interrupted before the first step" in err
    assert not out.exists()


@pytest.mark.subprocess
def test_sigterm_while_loading_exits_143(write_config, tmp_path):
    path = _slow_config(write_config, tmp_path, load=30.0)
    child = _start("-p", "tests.toy_plugins", "edit", str(path), "-q")
    _wait_for(tmp_path / "out" / LOCK_NAME, child)
    child.send_signal(signal.SIGTERM)
    child.communicate(timeout=20)
    assert child.returncode == 143
    assert not (tmp_path / "out").exists()


@pytest.mark.subprocess
def test_demo_exits_130_after_ctrl_c(tmp_path):
    out = tmp_path / "demo"
    child = _start("demo", "--out", str(out), "--steps", "100000", "-q")
    _wait_for(out / "losses.csv", child, timeout=120)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 130, err
    assert strict_json(out / "run.json")["status"] == "interrupted"
    assert (out / "latent_edited.pt").is_file()


def test_a_closed_stderr_pipe_loses_nothing(write_config, tmp_path, monkeypatch):
    """``soundguide edit run.toml 2>&1 | head``: the progress bar's stream closes mid-run;
    the run still finishes and writes everything."""
    import io

    class Pipe(io.StringIO):
        def write(self, text):
            if self.tell() + len(text) > 80:
                raise BrokenPipeError(32, "Broken pipe")
            return super().write(text)

    path = write_config(TOY_CONFIG.replace("steps = 12", "steps = 40"))
    monkeypatch.setattr(sys, "stderr", Pipe())
    assert cli("edit", str(path), "--out", str(tmp_path / "o")) == 0
    monkeypatch.undo()
    manifest = json.loads((tmp_path / "o" / "run.json").read_text())
    assert manifest["status"] == "finished" and manifest["steps_done"] == 40
    assert {"latent_edited.pt", "edited.png", "losses.csv"} <= {
        p.name for p in (tmp_path / "o").iterdir()
    }
