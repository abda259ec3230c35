"""``torchrun -m soundguide.cli batch`` with 2 CPU processes (gloo) against one process."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from tests.batch.helpers import batch, index, latents, write_config, write_csv

ROOT = Path(__file__).resolve().parents[2]
PLUGINS = ["-p", "tests.toy_plugins", "-p", "tests.batch.kill_plugin"]


def torchrun(*args: object, timeout: int = 120) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONWARNINGS": "ignore",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", "2", "-m", "soundguide.cli", "batch"]
    command += [*map(str, args), *PLUGINS, "--threads", "1", "-q"]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT
    )


def assert_same_latents(a: Path, b: Path) -> None:
    first, second = latents(a), latents(b)
    assert first.keys() == second.keys() and len(first) == 10
    for name, latent in first.items():
        assert torch.equal(latent, second[name]), name  # bit for bit


def test_two_processes_write_what_one_process_writes(tmp_path):
    """10 rows in batches of 3 (rows that share one optimization: not bit-identical to
    their solo runs on a CPU, so the batches must not depend on the number of processes)."""
    config = write_config(tmp_path)
    manifest = write_csv(tmp_path / "m.csv", [{"seed": s} for s in range(1, 11)])
    assert batch(config, manifest, "--out", tmp_path / "one", "--batch-size", "3") == 0
    done = torchrun(config, manifest, "--out", tmp_path / "two", "--batch-size", "3")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "10 finished; index: " in done.stdout
    assert_same_latents(tmp_path / "one", tmp_path / "two")
    ranks = Counter(row["rank"] for row in index(tmp_path / "two"))
    assert ranks == {"0": 6, "1": 4}  # batches 1-3, 7-9 on rank 0; 4-6, 10 on rank 1
    keep = ("row", "id", "status", "batch_size", "total")
    one = [{k: r[k] for k in keep} for r in index(tmp_path / "one")]
    assert one == [{k: r[k] for k in keep} for r in index(tmp_path / "two")]


KILL_CONFIG = """
[generator]
type = "toy"

[[guidance]]
type = "kill-target"
log = "{log}"
kill_tag = "r6"
marker = "{marker}"

[[regularizer]]
type = "latent_l2"
weight = 0.01

[optimization]
steps = 6
lr = 0.05
"""


def test_a_killed_rank_resumes_without_redoing_anything(tmp_path):
    """Rank 1 SIGKILLs itself at row 6 (its third); torchrun stops rank 0. The same
    command again does only what was not done, and the result is the clean run's."""
    log, marker = tmp_path / "calls.log", tmp_path / "killed"
    config = write_config(tmp_path, KILL_CONFIG.format(log=log, marker=marker))
    rows = [{"seed": s, "set": f'guidance.0.tag="r{s}"'} for s in range(1, 11)]
    manifest = write_csv(tmp_path / "m.csv", rows)
    marker.write_text("")  # the clean run: nobody is killed
    assert batch(config, manifest, "--out", tmp_path / "clean", plugins=PLUGINS) == 0
    log.unlink()
    marker.unlink()

    out = tmp_path / "out"
    killed = torchrun(config, manifest, "--out", out)
    assert killed.returncode != 0 and marker.exists()
    first = Counter(line.split()[0] for line in log.read_text().splitlines())
    done = {p.name for p in (out / "items").iterdir() if (p / "run.json").exists()}
    assert "6" not in done and 0 < len(done) < 10

    again = torchrun(config, manifest, "--out", out)
    assert again.returncode == 0, again.stderr[-3000:]
    calls = Counter(line.split()[0] for line in log.read_text().splitlines())
    for row in range(1, 11):
        tag = f"r{row}"
        if str(row) in done:
            assert calls[tag] == 1, tag  # done once, never again
        else:  # started (or not) before the kill, done after it
            assert calls[tag] == first[tag] + 1, tag
    assert [r["status"] for r in index(out)] == ["finished"] * 10
    assert_same_latents(tmp_path / "clean", out)


@pytest.fixture(autouse=True)
def _no_stale_rendezvous(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
