"""``soundguide invert`` from the command line, with the toy generator and inverter."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import soundguide
from soundguide.cli import main
from soundguide.core.config import load_config
from tests import toy_plugins

REPO = Path(__file__).resolve().parents[2]
GENERATOR = """
[generator]
type = "toy"
size = 8
layers = 4
dim = 48
"""


def _photo(path, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(path)
    return path


def invert(*args):
    return main(["-p", "tests.toy_plugins", "invert", *map(str, args), "--no-lpips", "-q"])


@pytest.fixture
def generator(tmp_path):
    path = tmp_path / "generator.toml"
    path.write_text(GENERATOR)
    return path


def test_invert_writes_one_folder_per_photo(tmp_path, generator, capsys):
    photo = _photo(tmp_path / "me.png")
    out = tmp_path / "out"
    assert invert(photo, "--generator", generator, "--method", "toy-inverter", "--out", out) == 0
    said = capsys.readouterr().out
    assert "me.png: PSNR" in said and str(out / "me") in said
    folder = out / "me"
    assert sorted(p.name for p in folder.iterdir()) == [
        "aligned.png",
        "invert.json",
        "latent.pt",
        "reconstruction.png",
        "side_by_side.png",
    ]
    saved = torch.load(folder / "latent.pt", weights_only=True)
    assert saved["latent"].shape == (1, 4, 48) and saved["noise"] is None
    assert Image.open(folder / "side_by_side.png").size == (8 + 2 + 8, 8)
    report = json.loads((folder / "invert.json").read_text())
    assert report["status"] == "finished" and report["method"] == "toy-inverter"
    assert report["settings"]["type"] == "toy-inverter" and report["settings"]["align"] is False
    assert report["photo"]["sha256"] and report["photo"]["aligned"] is False
    assert report["reconstruction"]["psnr"] > 40 and report["reconstruction"]["lpips"] is None
    assert report["latent_shape"] == [1, 4, 48] and report["seconds"] >= 0
    assert report["generator"]["config"]["type"] == "toy"


def test_the_latent_starts_an_edit_and_the_photo_finds_the_cache(tmp_path, generator):
    photo = _photo(tmp_path / "me.png")
    out = tmp_path / "inv"
    assert invert(photo, "--generator", generator, "--method", "toy-inverter", "--out", out) == 0
    assert toy_plugins.CALLS["inverter.invert"] == 1
    saved = torch.load(out / "me" / "latent.pt", weights_only=True)["latent"]
    registries = soundguide.core.plugins.load_registries(entry_points=False, plugins=[toy_plugins])
    base = GENERATOR + '\n[[guidance]]\ntype = "toy-target"\n\n[optimization]\nsteps = 2\n'
    by_latent = tmp_path / "by_latent.toml"
    by_latent.write_text(base + f'latent = "{out / "me" / "latent.pt"}"\n')
    result = soundguide.edit(
        load_config(by_latent, registries), write=False, progress=False, registries=registries
    )
    assert torch.equal(result.source_latent, saved)
    by_photo = tmp_path / "by_photo.toml"
    by_photo.write_text(base + 'image = "me.png"\n\n[inversion]\ntype = "toy-inverter"\n')
    result = soundguide.edit(
        load_config(by_photo, registries), write=False, progress=False, registries=registries
    )
    assert toy_plugins.CALLS["inverter.invert"] == 1  # the inversion came from the cache
    assert torch.equal(result.source_latent, saved) and result.photos[0]["cached"]


def test_a_bad_photo_is_skipped_and_the_others_are_kept(tmp_path, generator, capsys):
    good = _photo(tmp_path / "good.png")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff" + b"\x00" * 50)  # a JPEG cut short
    out = tmp_path / "out"
    code = invert(bad, good, "--generator", generator, "--method", "toy-inverter", "--out", out)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"error: cannot read photo {bad}" in err
    assert (out / "good" / "invert.json").is_file() and not (out / "bad").exists()


def test_when_no_photo_can_be_used_no_folder_is_left(tmp_path, generator, capsys):
    bad = tmp_path / "bad.png"
    bad.write_text("not a picture")
    out = tmp_path / "out"
    assert invert(bad, "--generator", generator, "--method", "toy-inverter", "--out", out) == 2
    assert "error: cannot read photo" in capsys.readouterr().err
    assert not out.exists()


def test_photos_with_the_same_name_get_their_own_folders(tmp_path, generator):
    a = _photo(tmp_path / "a" / "me.png", seed=1)
    b = _photo(tmp_path / "b" / "me.png", seed=2)
    out = tmp_path / "out"
    assert invert(a, b, "--generator", generator, "--method", "toy-inverter", "--out", out) == 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["me", "me-2"]
    first = json.loads((out / "me" / "invert.json").read_text())["photo"]["path"]
    assert first == str(a.resolve())


def test_overwrite_replaces_only_soundguides_files(tmp_path, generator, capsys):
    photo = _photo(tmp_path / "me.png")
    out = tmp_path / "out"
    args = (photo, "--generator", generator, "--method", "toy-inverter", "--out", out)
    assert invert(*args) == 0
    (out / "me" / "notes.txt").write_text("mine")
    assert invert(*args) == 2
    assert "output folder is not empty" in capsys.readouterr().err
    assert invert(*args, "--overwrite") == 0
    assert (out / "me" / "notes.txt").read_text() == "mine"
    assert (out / "me" / "latent.pt").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "e5e"], "unknown inverter 'e5e'"),
        (["--method", "toy-inverter", "--set", "inversion.shfit=1"], "did you mean 'shift'"),
        (["--method", "toy-inverter", "--set", "optimization.steps=1"], "takes generator.KEY"),
        (["--method", "e4e", "--steps", "5"], "--steps: inverter 'e4e' takes no steps"),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path, generator, capsys, args, message):
    photo = _photo(tmp_path / "me.png")
    code = invert(photo, "--generator", generator, "--out", tmp_path / "out", *args)
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_a_missing_photo_fails_before_loading(tmp_path, generator, capsys):
    code = invert(
        tmp_path / "nope.jpg",
        "--generator",
        generator,
        "--method",
        "toy-inverter",
        "--out",
        tmp_path / "out",
    )
    err = capsys.readouterr().err
    assert code == 2 and "nope.jpg (not found)" in err
    assert toy_plugins.CALLS["generator.build"] == 0 and not (tmp_path / "out").exists()


def test_lpips_weights_that_cannot_be_had_are_named(tmp_path, generator, capsys, monkeypatch):
    import urllib.error
    import urllib.request

    def offline(*_args, **_kwargs):
        raise urllib.error.URLError("no network here")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    photo = _photo(tmp_path / "me.png")
    code = main(
        [
            "-p",
            "tests.toy_plugins",
            "invert",
            str(photo),
            "--generator",
            str(generator),
            "--method",
            "toy-inverter",
            "--out",
            str(tmp_path / "out"),
            "-q",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "vgg16-397923af.pth" in err and "Traceback" not in err


@pytest.mark.subprocess
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_the_photo_in_progress_and_keeps_what_was_done(
    tmp_path, generator, sig, code
):
    photos = [_photo(tmp_path / f"p{i}.png", seed=i) for i in range(3)]
    out = tmp_path / "out"
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "soundguide.cli",
            "-p",
            "tests.toy_plugins",
            "invert",
            *map(str, photos),
            "--generator",
            str(generator),
            "--method",
            "toy-inverter",
            "--set",
            "inversion.steps=60",
            "--set",
            "inversion.step_seconds=0.05",
            "--no-lpips",
            "-q",
            "--out",
            str(out),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not (out / "p0" / "invert.json").exists():  # 3 s per photo
        assert child.poll() is None, child.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    child.send_signal(sig)
    _, err = child.communicate(timeout=60)
    assert child.returncode == code, err
    assert "Traceback" not in err and "stopped; what was done is in" in err
    first = json.loads((out / "p0" / "invert.json").read_text())
    second = json.loads((out / "p1" / "invert.json").read_text())
    assert first["status"] == "finished" and second["status"] == "interrupted"
    assert not (out / "p2").exists()


def _bad_photos(folder):
    from tests.core.test_images import png_claiming

    good = _photo(folder / "good.jpg")
    data = good.read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "text.jpg").write_text("not a picture")
    png_claiming(folder / "bomb.png", 20000, 20000)
    rgba = np.full((16, 16, 4), 255, np.uint8)
    rgba[0, 0, 3] = 0
    Image.fromarray(rgba, "RGBA").save(folder / "cutout.png")
    return {
        "missing.jpg": "(not found)",
        "truncated.jpg": "cannot read photo",
        "text.jpg": "not a picture file",
        "bomb.png": "400.0 megapixels",
        "cutout.png": "transparent pixels",
    }


def test_each_bad_photo_is_one_error_line_and_exit_2(tmp_path, generator, capsys):
    for name, message in _bad_photos(tmp_path).items():
        out = tmp_path / f"out-{name}"
        code = invert(
            tmp_path / name, "--generator", generator, "--method", "toy-inverter", "--out", out
        )
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert code == 2 and len(lines) == 1 and message in lines[0], (name, err)
        assert name in lines[0] and "Traceback" not in err
        assert not out.exists()


def test_grayscale_rgba_and_16_bit_photos_are_inverted(tmp_path, generator):
    _photo(tmp_path / "rgb.png")
    Image.open(tmp_path / "rgb.png").convert("L").save(tmp_path / "gray.png")
    Image.open(tmp_path / "rgb.png").convert("RGBA").save(tmp_path / "opaque.png")
    ramp = np.linspace(0, 65535, 30 * 40).reshape(30, 40).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    names = ["gray.png", "opaque.png", "deep.png"]
    out = tmp_path / "out"
    code = invert(
        *(tmp_path / n for n in names),
        "--generator",
        generator,
        "--method",
        "toy-inverter",
        "--out",
        out,
    )
    assert code == 0
    deep = np.asarray(Image.open(out / "deep" / "aligned.png"), dtype=float)
    assert 60 < deep.mean() < 200  # scaled from 16 bits, not clipped to white
