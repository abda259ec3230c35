"""``soundguide batch`` in one process (the torchrun tests are in test_torchrun.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from soundguide.cli import main
from tests.batch.helpers import TOY, batch, index, latents, write_config, write_csv
from tests.toy_plugins import CALLS


def test_items_are_single_edits_and_the_index_lists_every_row(tmp_path, capsys):
    config = write_config(tmp_path)
    manifest = write_csv(tmp_path / "m.csv", [{"id": "a", "seed": 3}, {"id": "b", "seed": 4}])
    assert batch(config, manifest, "--out", tmp_path / "out", "--batch-size", "1") == 0
    single = tmp_path / "single"
    assert (
        main(
            [
                "edit",
                str(config),
                "--set",
                "optimization.seed=4",
                "--out",
                str(single),
                "-p",
                "tests.toy_plugins",
                "-q",
            ]
        )  # fmt: skip
        == 0
    )
    item = tmp_path / "out" / "items" / "b"
    assert sorted(p.name for p in item.iterdir()) == sorted(p.name for p in single.iterdir())
    assert torch.equal(
        torch.load(item / "latent_edited.pt", weights_only=True),
        torch.load(single / "latent_edited.pt", weights_only=True),
    )
    assert (item / "losses.csv").read_text() == (single / "losses.csv").read_text()
    run = json.loads((item / "run.json").read_text())
    alone = json.loads((single / "run.json").read_text())
    assert run["config"]["optimization"] == alone["config"]["optimization"]
    assert run["seeds"] == [4] and run["losses"]["final"] == alone["losses"]["final"]
    assert run["batch"]["row"] == 2 and run["batch"]["batch_size"] == 1
    rows = index(tmp_path / "out")
    assert [(r["row"], r["id"], r["status"]) for r in rows] == [
        ("1", "a", "finished"),
        ("2", "b", "finished"),
    ]
    assert rows[1]["latent"] == "items/b/latent_edited.pt"
    assert float(rows[1]["total"]) == alone["losses"]["final"]["total"][0]
    assert float(rows[1]["loss:latent_l2"]) == alone["losses"]["final"]["terms"]["latent_l2"][0]


def test_a_bad_row_fails_alone_and_its_batch_mates_are_done(tmp_path, capsys):
    torch.save(torch.randn(3, 4, 8), tmp_path / "w.pt")
    config = write_config(tmp_path)
    rows = [{"latent": "w.pt", "latent_index": i} for i in (0, 7, 2)]
    manifest = write_csv(tmp_path / "m.csv", rows)
    out = tmp_path / "out"
    assert batch(config, manifest, "--out", out, "--batch-size", "3") == 2
    captured = capsys.readouterr()
    assert "row 2 (2): failed: latent index [7] out of range for " in captured.out
    assert "error: some rows failed" in captured.err
    rows = index(out)
    assert [r["status"] for r in rows] == ["finished", "failed", "finished"]
    assert rows[1]["error"].startswith("latent index [7] out of range for ")
    assert rows[0]["batch_size"] == "1"  # the batch failed, so its rows ran one by one
    assert not (out / "items" / "2").exists()
    # run again: the done rows are skipped, the bad one is tried (and fails) again
    CALLS.clear()
    assert batch(config, manifest, "--out", out, "--batch-size", "3") == 2
    assert CALLS["generator.build"] == 1  # only row 2 is pending: tried alone


def test_one_non_finite_item_does_not_stop_its_batch_mates(tmp_path, capsys):
    latents_file = torch.randn(3, 4, 8) * 0.1
    latents_file[1] += 100.0  # row 2 starts far away: its loss is NaN
    torch.save(latents_file, tmp_path / "w.pt")
    config = write_config(tmp_path, TOY + '[[regularizer]]\ntype = "nan-far-away"\nweight = 1.0\n')
    rows = [{"latent": "w.pt", "latent_index": i} for i in range(3)]
    manifest = write_csv(tmp_path / "m.csv", rows)
    out = tmp_path / "out"
    plugins = ["-p", "tests.toy_plugins", "-p", "tests.batch.kill_plugin"]
    assert batch(config, manifest, "--out", out, "--batch-size", "3", plugins=plugins) == 1
    assert "some rows' losses became non-finite" in capsys.readouterr().err
    rows = index(out)
    assert [r["status"] for r in rows] == ["finished", "nonfinite", "finished"]
    assert [r["batch_size"] for r in rows] == ["1", "1", "1"]  # the batch was retried row by row
    steps = json.loads((out / "items" / "1" / "run.json").read_text())["steps_done"]
    assert steps == 6  # all its updates, not stopped by row 2


def test_fail_fast_stops_at_the_first_failure(tmp_path, capsys):
    config = write_config(tmp_path)
    rows = [{"seed": 1}, {"latent": "missing.pt"}, {"seed": 2}, {"seed": 3}]
    manifest = write_csv(tmp_path / "m.csv", rows)
    out = tmp_path / "out"
    assert batch(config, manifest, "--out", out, "--batch-size", "1", "--fail-fast") == 2
    assert [r["status"] for r in index(out)] == ["finished", "failed", "pending", "pending"]
    assert "optimization.latent = " in index(out)[1]["error"]
    assert batch(config, manifest, "--out", out, "--batch-size", "1") == 2
    assert [r["status"] for r in index(out)] == ["finished", "failed", "finished", "finished"]


def test_a_rerun_skips_what_is_done_and_redoes_a_partial_item(tmp_path, capsys):
    config = write_config(tmp_path)
    manifest = write_csv(tmp_path / "m.csv", [{"seed": s} for s in (1, 2, 3, 4, 5)])
    out = tmp_path / "out"
    assert batch(config, manifest, "--out", out, "--batch-size", "2") == 0
    clean = latents(out)
    # item 5 (a batch alone) was killed while writing: no run.json, a stale file
    (out / "items" / "5" / "run.json").unlink()
    (out / "items" / "5" / "latent_edited.pt").write_bytes(b"half")
    CALLS.clear()
    assert batch(config, manifest, "--out", out, "--batch-size", "2") == 0
    assert CALLS["generator.build"] == 1  # rows 1-4 were done
    assert latents(out).keys() == clean.keys()
    for name, latent in latents(out).items():
        assert torch.equal(latent, clean[name]), name


def test_another_batch_in_the_same_folder_is_refused(tmp_path, capsys):
    config = write_config(tmp_path)
    out = tmp_path / "out"
    assert batch(config, write_csv(tmp_path / "a.csv", [{"seed": 1}]), "--out", out) == 0
    other = write_csv(tmp_path / "b.csv", [{"seed": 2}])
    assert batch(config, other, "--out", out) == 2
    assert f"error: {out} holds another batch (config {config}" in capsys.readouterr().err
    before = torch.load(out / "items" / "1" / "latent_edited.pt", weights_only=True)
    assert batch(config, other, "--out", out, "--overwrite") == 0
    after = torch.load(out / "items" / "1" / "latent_edited.pt", weights_only=True)
    assert not torch.equal(before, after)  # redone with seed 2
    (tmp_path / "edit").mkdir()
    (tmp_path / "edit" / "keep.txt").write_text("mine")
    assert batch(config, other, "--out", tmp_path / "edit") == 2
    assert "output folder is not empty and holds no batch" in capsys.readouterr().err


def test_row_errors_stop_everything_before_anything_runs(tmp_path, capsys):
    config = write_config(tmp_path)
    rows = [{"seed": s} for s in range(1, 7)] + [{"set": "guidance.0.wieght=0.5"}]
    manifest = write_csv(tmp_path / "manifest.csv", rows)
    CALLS.clear()
    assert batch(config, manifest, "--out", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert err.startswith(
        "error: manifest.csv row 7: guidance.0.wieght: extra inputs are not permitted "
        "(did you mean 'weight'?)\n"
    )
    assert not (tmp_path / "out").exists() and CALLS["generator.build"] == 0


def test_ctrl_c_stops_between_steps_and_a_rerun_goes_on(tmp_path):
    root = Path(__file__).resolve().parents[2]
    config = write_config(tmp_path, TOY_SLOW)
    manifest = write_csv(tmp_path / "m.csv", [{"seed": s} for s in range(1, 7)])
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "soundguide.cli", "batch", str(config), str(manifest)]
    command += ["--out", str(out), "-p", "tests.toy_plugins", "--threads", "1"]
    process = subprocess.Popen(command, env=env, cwd=root, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (out / "items" / "1" / "run.json").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 130
    statuses = [r["status"] for r in index(out)]
    done = statuses.count("finished")
    assert 1 <= done < 6 and set(statuses[done:]) <= {"interrupted", "pending"}
    assert not (out / "items" / str(done + 1) / "run.json").exists()
    CALLS.clear()
    assert batch(config, manifest, "--out", out) == 0
    assert CALLS["generator.build"] == 6 - done
    assert [r["status"] for r in index(out)] == ["finished"] * 6


TOY_SLOW = """
[generator]
type = "toy"
step_seconds = 0.03

[[guidance]]
type = "toy-target"

[optimization]
steps = 10
"""
