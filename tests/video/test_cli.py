"""``soundguide video``: the command, its flags, bad inputs (one line, exit 2) and signals."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

from soundguide.cli import main

REPO = Path(__file__).resolve().parents[2]
PLUGINS = ["-p", "tests.toy_plugins", "-p", "tests.video.toy_audio"]


def video(*args: str) -> int:
    return main([*PLUGINS, "video", *args])


def one_error_line(err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line and not line.startswith("hint: ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_flags_override_the_config_and_the_video_is_written(video_config, tmp_path, capsys):
    out = tmp_path / "out"
    path = video_config(steps=2, video="chunk = 16")
    assert video(str(path), "--out", str(out), "--fps", "3", "--chunk", "5", "--frames", "-q") == 0
    said = capsys.readouterr().out
    assert "12/12 frames at 3 fps" in said and "s/frame" in said
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["video"]["chunk"] == 5 and manifest["video"]["frames"] is True
    assert [c["frames"] for c in manifest["chunks"]] == [5, 5, 2]
    assert manifest["config"]["guidance"][0]["over_time"]["fps"] == 3
    assert len(list((out / "frames").iterdir())) == 12
    with av.open(str(out / "video.mp4")) as container:
        assert container.streams.video[0].frames == 12


def test_a_second_run_needs_overwrite_and_replaces_the_frames(video_config, tmp_path, capsys):
    out = tmp_path / "out"
    path = video_config(steps=1)
    assert video(str(path), "--out", str(out), "--frames", "-q") == 0
    (out / "notes.txt").write_text("mine")
    assert video(str(path), "--out", str(out), "-q") == 2
    one_error_line(capsys.readouterr().err, "output folder is not empty")
    assert video(str(path), "--out", str(out), "--fps", "2", "--overwrite", "-q") == 0
    assert not (out / "frames").exists()  # the old frames are soundguide's: removed
    assert (out / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    ("change", "needles"),
    [
        ({"fps": 0}, ["guidance.0.over_time.fps", "greater than 0"]),
        ({"window": 61}, ["guidance.0.over_time.window", "less than or equal to 60"]),
        ({"video": "chunk = 4\noverlap = 5"}, ["video", "overlap 5 is more than chunk 4"]),
        ({"video": "chunks = 4"}, ["video.chunks", "extra inputs are not permitted"]),
    ],
    ids=["fps-0", "window-61s", "overlap>chunk", "unknown-key"],
)
def test_bad_settings_are_one_line_errors(video_config, tmp_path, capsys, change, needles):
    out = tmp_path / "out"
    assert video(str(video_config(**change)), "--out", str(out), "-q") == 2
    one_error_line(capsys.readouterr().err, *needles)
    assert not out.exists()


def test_fps_0_on_the_command_line_is_refused(video_config, tmp_path, capsys):
    assert video(str(video_config()), "--out", str(tmp_path / "out"), "--fps", "0") == 2
    assert "Invalid value for '--fps'" in capsys.readouterr().err


def test_zero_length_audio_is_a_one_line_error(video_config, recording, tmp_path, capsys):
    sf.write(recording, np.zeros(0, dtype=np.float32), 44100)
    out = tmp_path / "out"
    assert video(str(video_config()), "--out", str(out), "-q") == 2
    one_error_line(capsys.readouterr().err, str(recording))
    assert not out.exists()


@pytest.mark.parametrize(
    ("rows", "needles"),
    [
        ("0,2,a forest\n1,3,a storm\n", ["row 2", "inside the row above", "must not overlap"]),
        ("2,3,a storm\n0,1,a forest\n", ["row 2", "before the row above", "time order"]),
        ("start,end,prompt\n1,1,a storm\n", ["row 2", "0 <= start < end"]),
        ("0,9,a storm\n", ["row 1", "after the recording's end (4.00 s)"]),
        ("0,x,a storm\n", ["row 1", "must be seconds"]),
    ],
    ids=["overlapping", "unordered", "empty-segment", "past-the-end", "not-a-number"],
)
def test_bad_timelines_are_one_line_errors_naming_the_row(
    video_config, tmp_path, capsys, rows, needles
):
    (tmp_path / "prompts.csv").write_text(rows)
    path = video_config(video='timeline = "prompts.csv"')
    out = tmp_path / "out"
    assert video(str(path), "--out", str(out), "-q") == 2
    one_error_line(capsys.readouterr().err, "prompts.csv", *needles)
    assert not out.exists()


def test_a_config_without_a_recording_is_refused(tmp_path, capsys):
    path = tmp_path / "still.toml"
    path.write_text('[generator]\ntype = "toy"\n\n[[guidance]]\ntype = "toy-target"\n')
    assert video(str(path), "--out", str(tmp_path / "out")) == 2
    one_error_line(capsys.readouterr().err, "needs an audio guidance")


def test_a_still_edit_refuses_over_time(video_config, tmp_path, capsys):
    assert main([*PLUGINS, "edit", str(video_config()), "--out", str(tmp_path / "o"), "-q"]) == 2
    one_error_line(capsys.readouterr().err, "over_time gives one target per video frame")


def test_importing_soundguide_and_its_plugins_does_not_import_av():
    code = (
        "import sys, soundguide; from soundguide.core.plugins import load_registries; "
        "load_registries(); from soundguide.cli import main; "
        "main(['--help']); assert 'av' not in sys.modules, 'av imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "video" in done.stdout  # listed by --help, without importing its module


def test_without_pyav_the_command_says_how_to_install_it(
    video_config, tmp_path, capsys, monkeypatch
):
    monkeypatch.setitem(sys.modules, "av", None)  # import av -> ImportError
    assert video(str(video_config()), "--out", str(tmp_path / "out")) == 2
    err = capsys.readouterr().err
    one_error_line(err, "needs PyAV")
    assert "pip install 'soundguide[video]'" in err


@pytest.mark.subprocess
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_keeps_the_finished_chunks_as_a_playable_video(video_config, tmp_path, sig, code):
    path = video_config(steps=40)
    text = path.read_text().replace('type = "toy"\n', 'type = "toy"\nstep_seconds = 0.02\n', 1)
    path.write_text(text)
    out = tmp_path / "out"
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "soundguide.cli",
            *PLUGINS,
            "video",
            str(path),
            "--out",
            str(out),
            "--chunk",
            "4",
            "--frames",
            "-q",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not (out / "frames" / "00003.png").exists():
        assert child.poll() is None, child.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    child.send_signal(sig)
    _, err = child.communicate(timeout=60)
    assert child.returncode == code, err
    assert "Traceback" not in err
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["status"] == "interrupted"
    done = manifest["frames_done"]
    assert done % 4 == 0 and 4 <= done < 24
    with av.open(str(out / "video.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == done
    assert len(list((out / "frames").iterdir())) == done
