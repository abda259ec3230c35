"""A photo as the start of an edit: ``[optimization] image = ...`` with ``[inversion]``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import soundguide
from soundguide.cli import main
from soundguide.core.config import load_config
from soundguide.core.errors import ConfigError
from tests import toy_plugins

CONFIG = """
[generator]
type = "toy"
size = 8
layers = 4
dim = 48

[[guidance]]
type = "toy-target"

[[regularizer]]
type = "latent_l2"
weight = 0.01

[optimization]
steps = 3
{start}

[inversion]
type = "toy-inverter"
{inversion}
"""


def _photo(folder, name="me.png", seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(folder / name)
    return folder / name


def _config(write_config, start='image = "me.png"', inversion=""):
    return write_config(CONFIG.format(start=start, inversion=inversion))


def test_an_edit_starts_from_the_inverted_photo(write_config, tmp_path, registries):
    _photo(tmp_path)
    config = load_config(_config(write_config), registries)
    result = soundguide.edit(config, out=tmp_path / "out", registries=registries, progress=False)
    assert result.ok and result.photo.shape == (1, 3, 8, 8)
    out = tmp_path / "out"
    for name in ("photo.png", "source.png", "edited.png", "comparison.png"):
        assert (out / name).is_file(), name
    # the comparison shows photo | source (the reconstruction) | edited
    width = Image.open(out / "comparison.png").width
    assert width == 3 * 8 + 2 * 2
    # the source is the inversion: it reconstructs the photo
    photo = np.asarray(Image.open(out / "photo.png"), dtype=float)
    source = np.asarray(Image.open(out / "source.png"), dtype=float)
    assert np.abs(photo - source).max() <= 2
    run = json.loads((out / "run.json").read_text())
    (record,) = run["photos"]
    assert record["path"].endswith("me.png") and record["inverter"] == "toy-inverter"
    assert record["cached"] is False and record["psnr"] > 40
    assert len(record["sha256"]) == 64


def test_a_second_edit_of_the_photo_uses_the_cache(write_config, tmp_path, registries):
    _photo(tmp_path)
    config = load_config(_config(write_config), registries)
    soundguide.edit(config, out=tmp_path / "a", registries=registries, progress=False)
    assert toy_plugins.CALLS["inverter.invert"] == 1
    soundguide.edit(config, out=tmp_path / "b", registries=registries, progress=False)
    assert toy_plugins.CALLS["inverter.invert"] == 1
    run = json.loads((tmp_path / "b" / "run.json").read_text())
    assert run["photos"][0]["cached"] is True
    # other inversion settings invert again
    other = load_config(_config(write_config, inversion="shift = 0.1"), registries)
    soundguide.edit(other, out=tmp_path / "c", registries=registries, progress=False)
    assert toy_plugins.CALLS["inverter.invert"] == 2


def test_a_list_of_photos_is_a_batch(write_config, tmp_path, registries):
    _photo(tmp_path, "a.png", seed=1)
    _photo(tmp_path, "b.png", seed=2)
    config = load_config(_config(write_config, start='image = ["a.png", "b.png"]'), registries)
    result = soundguide.edit(config, out=tmp_path / "out", registries=registries, progress=False)
    assert result.source_latent.shape == (2, 4, 48) and result.photo.shape == (2, 3, 8, 8)
    assert not torch.equal(result.source_latent[0], result.source_latent[1])
    assert [p["path"][-5:] for p in result.photos] == ["a.png", "b.png"]


@pytest.mark.parametrize(
    ("start", "message"),
    [
        ('image = "me.png"\nlatent = "w.pt"', "set image .* or latent .*, not both"),
        ("image = []", "image list is empty"),
        ('image = "me.png"\nseed = [1, 2]', "a seed list has nothing to seed"),
        ('image = ["me.png", "me.png", "me.png"]\nmax_batch = 2', "image list of 3 items"),
    ],
)
def test_conflicting_starts_are_config_errors(write_config, registries, start, message):
    with pytest.raises(ConfigError, match=message):
        load_config(_config(write_config, start=start), registries)


def test_without_an_inversion_table_projection_is_the_default(write_config, registries):
    path = write_config(
        CONFIG.format(start='image = "me.png"', inversion="").split("[inversion]")[0]
    )
    assert load_config(path, registries).inversion.type == "projection"


def test_unknown_inverter_and_options_are_located(write_config, registries):
    with pytest.raises(ConfigError, match=r"inversion.type: unknown inverter 'e5e'.*did you mean"):
        load_config(
            write_config(
                CONFIG.format(start="", inversion="").replace(
                    'type = "toy-inverter"', 'type = "e5e"'
                )
            ),
            registries,
        )
    with pytest.raises(ConfigError, match=r"inversion.shfit: extra inputs .*did you mean 'shift'"):
        load_config(_config(write_config, inversion="shfit = 1"), registries)


def test_a_bad_photo_fails_before_any_folder_is_made(write_config, tmp_path, capsys):
    (tmp_path / "me.png").write_text("not a picture")
    code = main(
        [
            "-p",
            "tests.toy_plugins",
            "edit",
            str(_config(write_config)),
            "--out",
            str(tmp_path / "out"),
            "-q",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "cannot read photo" in err and "me.png" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 2
    assert not (tmp_path / "out").exists()


def test_a_missing_photo_is_found_with_the_other_inputs(write_config, tmp_path, capsys):
    code = main(["-p", "tests.toy_plugins", "config", "check", str(_config(write_config))])
    err = capsys.readouterr().err
    assert code == 2 and "optimization.image" in err and "me.png" in err


def test_a_face_inverter_is_refused_for_other_generators(write_config, tmp_path, registries):
    _photo(tmp_path)
    path = write_config(
        CONFIG.format(start='image = "me.png"', inversion="faces_only = true").replace(
            "dim = 48", 'dim = 48\ndomain = "landscape"'
        )
    )
    with pytest.raises(ConfigError, match="made for face pictures"):
        soundguide.edit(
            load_config(path, registries), out=tmp_path / "o", registries=registries, progress=False
        )
    assert not (tmp_path / "o").exists()
