"""The app's runner without a browser: a run, its TOML re-run by the CLI, Stop, shared models."""

from __future__ import annotations

import json

import pytest
import torch

from soundguide.app.configs import PageRun, Source
from soundguide.app.runner import AppRunner
from soundguide.cli import main
from soundguide.core.interfaces import ModelStore
from soundguide.core.plugins import load_registries
from tests.app import helpers


@pytest.fixture(scope="module")
def registries():
    return load_registries(entry_points=False)


def page_run(models, **changes) -> PageRun:
    return helpers.page_run(
        models, **{"seed": 5, "steps": 4, "regularizers": {"latent_l2": 0.002}, **changes}
    )


def finish(handle):
    updates = list(handle.updates())
    assert updates[-1].kind == "done", updates[-1].error
    return updates


def test_a_run_streams_its_steps_and_its_toml_reruns_exactly(
    demo_models, registries, tmp_path, capsys
):
    runner = AppRunner(registries, history=tmp_path / "history")
    handle = runner.start(page_run(demo_models), preview_every=2)
    updates = finish(handle)
    steps = [u for u in updates if u.kind == "step"]
    assert [u.step for u in steps] == [0, 1, 2, 3, 4]
    assert [u.image is not None for u in steps] == [True, False, True, False, True]
    assert set(steps[0].losses) == {"audio", "text", "latent_l2", "total"}
    folder = handle.folder
    manifest = json.loads((folder / "run.json").read_text())
    assert manifest["status"] == "finished"
    assert [g["weight"] for g in manifest["config"]["guidance"]] == [0.8, -0.3]
    assert (folder / "inputs" / "audio-0.wav").is_file()
    assert (folder / "trajectory.gif").is_file()
    # the config the page shows, run by the CLI: the same latent, bit for bit
    assert (folder / "config.toml").read_text() == handle.toml
    assert main(["edit", str(folder / "config.toml"), "-q"]) == 0
    app_latent = torch.load(folder / "latent_edited.pt", weights_only=True)
    cli_latent = torch.load(folder / "rerun" / "latent_edited.pt", weights_only=True)
    assert torch.equal(app_latent, cli_latent)


def test_stop_ends_the_run_between_steps_and_keeps_the_outputs(demo_models, registries, tmp_path):
    runner = AppRunner(registries, history=tmp_path / "history")
    handle = runner.start(page_run(demo_models, steps=500), preview_every=1, session="me")
    for update in handle.updates():
        if update.image is not None:
            assert runner.stop(session="someone else") is False  # not their run
            assert runner.stop(session="me") is True
            break
    finish(handle)
    manifest = json.loads((handle.folder / "run.json").read_text())
    assert manifest["status"] == "interrupted"
    assert manifest["message"].startswith("stopped in the app: stopped after")
    assert manifest["steps_done"] < 500
    assert (handle.folder / "latent_edited.pt").is_file()
    assert (handle.folder / "edited.png").is_file()


def test_a_bad_run_reports_one_line_and_leaves_no_folder(demo_models, registries, tmp_path):
    runner = AppRunner(registries, history=tmp_path / "history")
    missing = page_run(demo_models, clip_model=str(tmp_path / "nope.pt"))
    handle = runner.start(missing)
    updates = list(handle.updates())
    assert updates[-1].kind == "error"
    assert updates[-1].error.startswith("error: ")
    assert "\n" not in updates[-1].error
    with pytest.raises(Exception, match="steps: input should be"):
        runner.start(page_run(demo_models, steps=-3))
    assert len(list((tmp_path / "history").iterdir())) == 1  # the failed check made none


def test_networks_load_once_and_run_b_after_a_equals_b_alone(demo_models, registries, tmp_path):
    shared = AppRunner(registries, history=tmp_path / "shared", models=ModelStore())
    finish(shared.start(page_run(demo_models, seed=1, steps=3)))
    loaded = len(shared.models)
    b = shared.start(page_run(demo_models, seed=2, steps=3, sources=[Source("text", "rain")]))
    finish(b)
    assert len(shared.models) == loaded  # run B loaded nothing new
    alone = AppRunner(registries, history=tmp_path / "alone")
    b_alone = alone.start(page_run(demo_models, seed=2, steps=3, sources=[Source("text", "rain")]))
    finish(b_alone)
    for name in ("latent_edited.pt", "latent_source.pt"):
        assert torch.equal(
            torch.load(b.folder / name, weights_only=True),
            torch.load(b_alone.folder / name, weights_only=True),
        )


def test_a_photo_start_streams_its_reconstruction_first(tmp_path):
    import numpy as np
    from PIL import Image

    from tests import toy_plugins

    registries = load_registries(entry_points=False, plugins=[toy_plugins])
    photo = tmp_path / "me.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(photo)
    run = PageRun(
        sources=[Source("toy-target", {"dim": 8}, 1.0)],
        generator={"type": "toy", "size": 8, "layers": 4, "dim": 48},
        start="photo",
        photo=str(photo),
        inverter="toy-inverter",
        steps=3,
    )
    handle = AppRunner(registries, history=tmp_path / "history").start(run, preview_every=1)
    updates = finish(handle)
    folder = handle.folder
    assert (folder / "inputs" / "start-photo.png").read_bytes() == photo.read_bytes()
    # the first preview, shown before the edit moves, is the inversion's reconstruction
    first = updates[0]
    assert first.step == 0
    assert torch.equal(first.image, updates[-1].result.source_image)
    for name in ("photo.png", "source.png", "edited.png"):
        assert (folder / name).is_file()
    assert 'type = "toy-inverter"' in handle.toml
