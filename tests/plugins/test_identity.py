from __future__ import annotations

from collections import Counter

import pytest
import torch

import soundguide.plugins.identity as identity_module
from soundguide.core.config import config_from_dict
from soundguide.core.engine import Editor
from soundguide.core.errors import CheckpointError, ConfigError, SoundguideError
from soundguide.core.plugins import load_registries
from soundguide.encoders.arcface import ArcFaceIRSE50, face_features, identity_loss, load_arcface
from soundguide.plugins.identity import FaceIdentity
from tests import toy_plugins
from tests.factories import random_arcface


@pytest.fixture
def registries():
    # the lead adds the module to BUILTIN_PLUGINS; registering it again is a no-op
    return load_registries(entry_points=False, plugins=[toy_plugins, identity_module])


@pytest.fixture(scope="module")
def arcface_file(tmp_path_factory):
    """A random full-size IR-SE50 saved like model_ir_se50.pth (a plain state dict)."""
    path = tmp_path_factory.mktemp("arcface") / "model_ir_se50.pth"
    torch.save(random_arcface(0).state_dict(), path)
    return path


@pytest.fixture
def calls(monkeypatch):
    """Counts plugin constructions and ArcFace forwards."""
    counter: Counter[str] = Counter()
    init, forward = FaceIdentity.__init__, ArcFaceIRSE50.forward

    def counting_init(self, *args, **kwargs):
        counter["build"] += 1
        init(self, *args, **kwargs)

    def counting_forward(self, face):
        counter["forward"] += 1
        return forward(self, face)

    monkeypatch.setattr(FaceIdentity, "__init__", counting_init)
    monkeypatch.setattr(ArcFaceIRSE50, "forward", counting_forward)
    return counter


def make(registries, steps=2, lr=0.1, **identity):
    cfg = config_from_dict(
        {
            # 64 px toy images are pooled to 256 px, then cropped like FFHQ faces
            "generator": {"type": "toy", "size": 64},
            "guidance": [{"type": "toy-target"}],
            "regularizer": [{"type": "identity", **identity}],
            "optimization": {"steps": steps, "seed": 0, "lr": lr, "schedule": "constant"},
        },
        registries,
    )
    return Editor(cfg, registries, progress=False)


def test_config_defaults_and_registration(registries):
    assert registries.regularizers.get("identity") is FaceIdentity
    assert "arcface-ir-se50" in registries.weights
    config = FaceIdentity.Config()
    assert config.weight == 0.005
    assert config.weights == "arcface-ir-se50"
    fields = FaceIdentity.Config.model_fields
    assert all("faces only" in fields[f].description.lower() for f in ("weight", "weights"))
    assert FaceIdentity.needs_image


def test_weight_zero_is_never_built_nor_run(registries, calls):
    # a file that does not exist: building the term would fail
    result = make(registries, weight=0.0, weights="/nowhere/model_ir_se50.pth").run()
    assert result.ok
    assert calls == Counter()
    assert all("identity" not in record["terms"] for record in result.history)


def test_zero_at_the_source_positive_after_the_latent_moves(registries, arcface_file, calls):
    steps = 2
    editor = make(registries, steps=steps, weight=1.0, weights=str(arcface_file))
    result = editor.run()
    assert result.ok
    values = [record["terms"]["identity"][0] for record in result.history]
    assert len(values) == steps + 1  # every step plus the final evaluation
    assert abs(values[0]) < 1e-5  # the first step's image is the source image
    assert all(v > 1e-4 for v in values[1:])
    # source features once in setup, one forward per step, one for the final evaluation
    assert calls == Counter(build=1, forward=1 + steps + 1)
    assert arcface_file in result.files


def test_term_is_weight_times_one_minus_cos_and_moves_the_latent(registries, arcface_file):
    editor = make(registries, weight=0.5, weights=str(arcface_file))
    editor.prepare()
    network = load_arcface(arcface_file)
    w = (editor.w0 + 0.05 * torch.randn_like(editor.w0)).requires_grad_(True)
    term = editor.losses(w)["identity"]
    with torch.no_grad():
        image0 = editor.generator.synthesize(editor.w0)
        expected = 0.5 * identity_loss(
            face_features(network, editor.generator.synthesize(w)), face_features(network, image0)
        )
    torch.testing.assert_close(term.detach(), expected, rtol=1e-4, atol=1e-6)
    # unlike the original code, whose ID term never reaches the latent
    term.sum().backward()
    assert w.grad is not None and w.grad.abs().sum() > 0


def test_default_weights_come_from_the_known_weights_cache(registries, arcface_file, calls):
    local = registries.weights.local_path("arcface-ir-se50")
    local.parent.mkdir(parents=True, exist_ok=True)
    local.symlink_to(arcface_file)  # as if downloaded once before
    editor = make(registries, steps=0, weight=1.0)
    editor.prepare()
    assert editor.regularizers[0].plugin.files() == [local]
    assert calls["forward"] == 1


def test_missing_weights_file_is_one_line_error(registries, tmp_path):
    missing = tmp_path / "model_ir_se50.pth"
    with pytest.raises(ConfigError, match=r"regularizer\.0\.weights = .* \(not found\)") as info:
        make(registries, weights=str(missing)).prepare()
    assert "\n" not in str(info.value)
    assert str(missing) in str(info.value)


def test_wrong_checkpoint_is_one_line_error(registries, tmp_path):
    bad = tmp_path / "not_arcface.pth"
    torch.save({"conv.weight": torch.zeros(3, 1, 3, 3)}, bad)
    with pytest.raises(CheckpointError) as info:
        make(registries, weights=str(bad)).prepare()
    assert isinstance(info.value, SoundguideError)
    assert "\n" not in str(info.value)
    assert "does not fit ArcFace IR-SE50" in str(info.value)


def test_reference_photo_compares_with_the_photo(registries, arcface_file, tmp_path):
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (70, 70, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "me.png")
    cfg = config_from_dict(
        {
            "generator": {"type": "toy", "size": 64, "layers": 2, "dim": 8},
            "guidance": [{"type": "toy-target"}],
            "regularizer": [
                {
                    "type": "identity",
                    "weight": 1.0,
                    "weights": str(arcface_file),
                    "reference": "photo",
                }
            ],
            "optimization": {"steps": 0, "image": str(tmp_path / "me.png")},
            # a poor inversion on purpose: the toy generator cannot make this photo
            "inversion": {"type": "toy-inverter"},
        },
        registries,
    )
    editor = Editor(cfg, registries, progress=False)
    editor.prepare()
    network = load_arcface(arcface_file)
    term = editor.losses(editor.w0)["identity"]
    expected = identity_loss(
        face_features(network, editor.image0), face_features(network, editor.context.photo)
    )
    torch.testing.assert_close(term, expected, rtol=1e-4, atol=1e-6)
    assert float(term) > 1e-3  # the reconstruction is not the photo; with "source" it is 0


def test_reference_photo_without_a_photo_is_a_config_error(registries, arcface_file):
    with pytest.raises(
        ConfigError, match="reference = 'photo' needs a run that starts from a photo"
    ):
        make(registries, weight=1.0, weights=str(arcface_file), reference="photo").prepare()
