"""The built-in inverters as plugins: e4e, projection and e4e+projection.

The numerics live in tests/encoders/test_e4e.py and tests/inversion/test_projection.py;
here: registration, what each plugin reads, the settings it hands on, the checks it
makes against the generator, and the e4e start of e4e+projection.
"""

from __future__ import annotations

import pytest
import torch

from soundguide.cli import main
from soundguide.core.errors import ConfigError
from soundguide.core.interfaces import RunContext
from soundguide.core.plugins import load_registries
from soundguide.encoders.e4e import e4e_input, load_e4e
from soundguide.plugins.e4e import E4E
from soundguide.plugins.projection import E4EProjection, Projection
from soundguide.plugins.stylegan2 import StyleGAN2
from tests.factories import save_random_e4e, save_random_vgg16, save_tiny_stylegan2


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inverters")
    return {
        # e4e's W+ is 512 wide: a 16 px generator of 512-dim styles has 6 layers
        # (LPIPS needs 16 px at least)
        "generator": save_tiny_stylegan2(folder / "g16.pt", size=16, style_dim=512),
        "small": save_tiny_stylegan2(folder / "g32.pt", size=32, style_dim=32),
        "e4e": save_random_e4e(folder / "e4e.pt", size=16),
        "vgg": save_random_vgg16(folder / "vgg.pth"),
    }


def generator(path, **config):
    return StyleGAN2(StyleGAN2.Config(checkpoint=path, mean_samples=16, **config), RunContext())


def photos(n=1, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


def test_the_builtin_inverters_and_their_weights_are_registered(capsys):
    registries = load_registries(entry_points=False)
    assert registries.inverters.names() == ["e4e", "e4e+projection", "projection"]
    assert {"e4e-ffhq-encode", "vgg16-lpips"} <= {e.name for e in registries.weights}
    assert main(["plugins"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert ["inverter", "e4e", "soundguide.plugins.e4e", "soundguide", "(built-in)"] in rows
    assert [
        "inverter",
        "projection",
        "soundguide.plugins.projection",
        "soundguide",
        "(built-in)",
    ] in rows


def test_defaults_follow_the_recipes():
    p, ep, e = Projection.Config(), E4EProjection.Config(), E4E.Config()
    assert (p.steps, p.lr, p.w_plus, p.noise_regularize, p.mse) == (1000, 0.1, False, 1e5, 0.0)
    assert (p.latent_noise, p.noise_ramp, p.mean_samples, p.lpips) == (
        0.05,
        0.75,
        10_000,
        "vgg16-lpips",
    )
    assert (ep.steps, ep.w_plus, ep.e4e) == (200, True, "e4e-ffhq-encode")
    assert e.weights == "e4e-ffhq-encode" and e.align is False
    assert E4E.domains == ("face",) and E4EProjection.domains == ("face",)
    assert Projection.domains is None


def test_e4e_is_the_encoder_on_e4es_input(files):
    gen = generator(files["generator"])
    inverter = E4E(E4E.Config(weights=str(files["e4e"])), RunContext())
    images = photos(2)
    result = inverter.invert(images, gen)
    expected = load_e4e(files["e4e"])(e4e_input(images))
    assert result.latent.shape == (2, 6, 512) and result.noise is None
    torch.testing.assert_close(result.latent, expected)
    assert inverter.files() == [files["e4e"]]


def test_e4e_refuses_a_generator_of_another_latent_shape(files):
    inverter = E4E(E4E.Config(weights=str(files["e4e"])), RunContext())
    small = generator(files["small"])
    with pytest.raises(
        ConfigError, match="makes 6 latents of 512 values, but the generator needs 8 of 32"
    ):
        inverter.invert(photos(1, 32), small)


def test_projection_hands_its_settings_on(files):
    config = Projection.Config(
        steps=7,
        lr=0.2,
        w_plus=True,
        noise_regularize=3.0,
        mse=0.5,
        latent_noise=0.1,
        noise_ramp=0.5,
        mean_samples=32,
        lpips=str(files["vgg"]),
    )
    settings = Projection(config, RunContext()).settings()
    assert (settings.steps, settings.lr, settings.w_plus, settings.noise_regularize) == (
        7,
        0.2,
        True,
        3.0,
    )
    assert (settings.mse, settings.noise, settings.noise_ramp, settings.mean_samples) == (
        0.5,
        0.1,
        0.5,
        32,
    )


def test_e4e_projection_starts_from_e4es_code(files):
    gen = generator(files["generator"])
    images = photos(1)
    e4e_latent = E4E(E4E.Config(weights=str(files["e4e"])), RunContext()).invert(images, gen).latent

    def refine(steps):
        config = E4EProjection.Config(
            e4e=str(files["e4e"]), lpips=str(files["vgg"]), steps=steps, mean_samples=32
        )
        inverter = E4EProjection(config, RunContext(progress=False))
        assert inverter.files() == [files["e4e"], files["vgg"]]
        return inverter.invert(images, gen)

    torch.testing.assert_close(refine(0).latent, e4e_latent)  # no step: e4e's code itself
    refined = refine(4)
    assert refined.noise is not None and len(refined.noise) == len(gen.noise_maps())
    assert not torch.equal(refined.latent, e4e_latent)
    assert len(refined.history["total"]) == 4


def test_lpips_distance_is_measured_as_the_loss_sees_it(files):
    inverter = Projection(Projection.Config(lpips=str(files["vgg"])), RunContext())
    a, b = photos(2, 32, seed=1), photos(2, 32, seed=2)
    d = inverter.lpips_distance(a, b)
    assert d.shape == (2,) and bool((d > 0).all())
    assert torch.allclose(inverter.lpips_distance(a, a), torch.zeros(2), atol=1e-6)


def test_invert_with_e4e_from_the_command_line(files, tmp_path, capsys):
    import json

    from PIL import Image

    Image.new("RGB", (40, 30), (200, 120, 90)).save(tmp_path / "me.png")
    args = [
        "invert",
        str(tmp_path / "me.png"),
        "--generator",
        str(files["generator"]),
        "--method",
        "e4e",
        "--set",
        f'inversion.weights="{files["e4e"]}"',
        "--no-lpips",
        "-q",
        "--out",
    ]
    assert main([*args, str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "me" / "invert.json").read_text())
    assert report["method"] == "e4e" and report["noise_tuned"] is False
    assert report["latent_shape"] == [1, 6, 512]
    assert [f["path"] for f in report["inverter_files"]] == [str(files["e4e"])]
    # e4e is made for faces: a generator of landscapes is refused before any photo is read
    code = main([*args, str(tmp_path / "out2"), "--set", 'generator.domain="landscape"'])
    err = capsys.readouterr().err
    assert code == 2 and "inverter 'e4e' is made for face pictures" in err
    assert not (tmp_path / "out2").exists()
