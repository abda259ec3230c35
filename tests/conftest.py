from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
from threadpoolctl import threadpool_limits

from soundguide.core.plugins import load_registries
from tests import toy_plugins


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Every test runs torch and BLAS (numpy, scikit-learn) on one thread, set back after.

    Results then do not depend on the machine's core count (a reduction splits
    the same way everywhere), and tests of tiny models run far faster on a
    shared 2-core machine without thread contention. Subprocesses a test starts
    are not affected.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1, user_api="blas"):
        yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _process_local_progress_bars(monkeypatch):
    """tqdm's default lock is a semaphore shared with every process forked from the one that
    made it (mutmut forks one per mutant): a process killed mid-bar would block all the rest."""
    import threading

    import tqdm.auto

    monkeypatch.setattr(tqdm.auto.tqdm, "_lock", threading.RLock(), raising=False)
    monkeypatch.setattr(tqdm.auto.tqdm, "monitor_interval", 0)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Every test gets its own $SOUNDGUIDE_HOME and no third-party entry points."""
    monkeypatch.setenv("SOUNDGUIDE_HOME", str(tmp_path_factory.mktemp("home")))
    monkeypatch.setenv("SOUNDGUIDE_DISABLE_PLUGIN_AUTOLOAD", "1")
    toy_plugins.reset()


@pytest.fixture
def registries():
    return load_registries(entry_points=False, plugins=[toy_plugins])


@pytest.fixture
def write_config(tmp_path):
    def write(text: str, name: str = "run.toml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write


TOY_CONFIG = """
[generator]
type = "toy"

[[guidance]]
type = "toy-target"
weight = 1.0

[[guidance]]
type = "toy-target"
weight = 0.5
seed = 3
space_name = "other"

[[regularizer]]
type = "latent_l2"
weight = 0.01

[optimization]
steps = 12
seed = 7

[output]
dir = "out"
"""
