"""A real photo, end to end from the command line, with the built-in plugins and tiny
random weights: ``soundguide invert`` (aligned by dlib's landmarks, projected with LPIPS),
then an edit that starts from the same photo and finds the inversion in the cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from soundguide.cli import main
from tests.factories import random_arcface, save_random_vgg16, save_tiny_clip, save_tiny_stylegan2

skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("e2e")
    Image.fromarray(skimage_data.astronaut()).save(folder / "astronaut.png")
    Image.new("RGB", (200, 160), (128, 128, 128)).save(folder / "wall.png")
    torch.save(random_arcface(0).state_dict(), folder / "arcface.pth")
    return {
        "astronaut": folder / "astronaut.png",
        "wall": folder / "wall.png",
        "generator": save_tiny_stylegan2(folder / "g.pt", size=32),
        "vgg": save_random_vgg16(folder / "vgg.pth"),
        "clip": save_tiny_clip(folder / "clip.pt"),
        "arcface": folder / "arcface.pth",
    }


def _needs_dlib():
    pytest.importorskip("dlib")


def invert_args(files, out, *extra):
    return [
        "invert",
        str(files["astronaut"]),
        "--generator",
        str(files["generator"]),
        "--method",
        "projection",
        "--steps",
        "8",
        "--set",
        f'inversion.lpips="{files["vgg"]}"',
        "--set",
        "inversion.mean_samples=256",
        "--out",
        str(out),
        "-q",
        *extra,
    ]


def test_invert_a_real_photo_aligned(files, tmp_path, capsys):
    _needs_dlib()
    out = tmp_path / "inv"
    assert main(invert_args(files, out, "--align")) == 0
    assert "astronaut.png: PSNR" in capsys.readouterr().out
    report = json.loads((out / "astronaut" / "invert.json").read_text())
    assert report["photo"]["aligned"] is True and len(report["photo"]["quad"]) == 4
    assert report["noise_tuned"] is True and report["latent_shape"] == [1, 8, 64]
    metrics = report["reconstruction"]
    assert all(np.isfinite(metrics[k]) for k in ("mse", "psnr", "lpips"))
    assert [f["path"] for f in report["inverter_files"]] == [str(files["vgg"])]
    saved = torch.load(out / "astronaut" / "latent.pt", weights_only=True)
    assert len(saved["noise"]) == 7 and saved["noise"][-1].shape == (1, 1, 32, 32)
    aligned = np.asarray(Image.open(out / "astronaut" / "aligned.png"))
    assert aligned.shape == (32, 32, 3) and aligned.std() > 10


def test_the_edit_of_the_photo_starts_from_the_inversion_with_its_noise(files, tmp_path):
    out = tmp_path / "inv"
    assert main(invert_args(files, out)) == 0
    config = tmp_path / "edit.toml"
    config.write_text(
        f"""
[generator]
type = "stylegan2"
checkpoint = "{files["generator"]}"
mean_samples = 64

[[guidance]]
type = "text"
prompt = "an astronaut in space"
clip_model = "{files["clip"]}"

[[regularizer]]
type = "identity"
weights = "{files["arcface"]}"
reference = "photo"

[optimization]
steps = 2
image = "{files["astronaut"]}"

[inversion]
type = "projection"
steps = 8
lpips = "{files["vgg"]}"
mean_samples = 256
"""
    )
    edit = tmp_path / "edit"
    assert main(["edit", str(config), "--out", str(edit), "-q"]) == 0
    run = json.loads((edit / "run.json").read_text())
    assert run["photos"][0]["cached"] is True  # what invert computed
    # the edit's source is the inversion's reconstruction: the tuned noise came along
    source = np.asarray(Image.open(edit / "source.png"), dtype=int)
    reconstruction = np.asarray(Image.open(out / "astronaut" / "reconstruction.png"), dtype=int)
    assert np.abs(source - reconstruction).max() <= 1
    photo = np.asarray(Image.open(edit / "photo.png"), dtype=int)
    assert np.array_equal(photo, np.asarray(Image.open(out / "astronaut" / "aligned.png")))
    assert Image.open(edit / "comparison.png").width == 3 * 32 + 2 * 2
    # reference = "photo": the identity term compares with the photo, which the reconstruction
    # is not, so it is above 0 from the first step (with "source" it starts at 0)
    assert run["losses"]["first"]["terms"]["identity"][0] > 1e-4


def test_no_face_in_the_photo_is_one_line(files, tmp_path, capsys):
    _needs_dlib()
    args = invert_args(files, tmp_path / "inv", "--align")
    args[1] = str(files["wall"])
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"no face found in photo {files['wall']}" in err and "Traceback" not in err


def test_align_for_a_generator_of_landscapes_crops_instead(files, tmp_path, capsys):
    args = invert_args(files, tmp_path / "inv", "--align", "--set", 'generator.domain="landscape"')
    assert main(args) == 0
    assert "not faces; the photo is resized and centre-cropped" in capsys.readouterr().err
    report = json.loads((tmp_path / "inv" / "astronaut" / "invert.json").read_text())
    assert report["photo"]["aligned"] is False
