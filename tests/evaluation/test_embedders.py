from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
import torch

from soundguide.core.errors import ConfigError, PluginError, UnknownPluginError, WeightsError
from soundguide.core.files import sha256_file
from soundguide.core.plugins import load_registries
from soundguide.encoders.clip import VIT_B_32
from soundguide.encoders.clip_weights import CLIP_MODELS
from soundguide.encoders.soundclip import SoundCLIPEncoder, embed_audio, load_soundclip
from soundguide.evaluation import (
    AudioEmbedder,
    SoundCLIPEmbedder,
    embed_dataset,
    embedder_from_guidance,
    load_esc50,
)
from soundguide.evaluation.embedders import (
    RELEASED_CLIP_SHAPES,
    clip_weights_check,
    describe_clip_file,
    describe_embedder,
    soundclip_weights_check,
)
from tests.evaluation import oracle_plugin
from tests.evaluation.conftest import write_esc50
from tests.factories import TINY_CLIP, clip, random_soundclip, tiny_clip_reference

SR = 44100


@pytest.fixture(scope="module")
def encoder(soundclip_file) -> SoundCLIPEncoder:
    return load_soundclip(soundclip_file)


def _waves() -> list[torch.Tensor]:
    rng = np.random.default_rng(0)
    t = lambda s: np.arange(int(s * SR)) / SR  # noqa: E731
    short_a = 0.3 * np.sin(2 * np.pi * 440 * t(0.5))
    short_b = 0.1 * rng.standard_normal(len(short_a))  # same length: one front-end call
    long = 0.3 * np.sin(2 * np.pi * (200 + 300 * t(11.0)) * t(11.0))  # > 10.03 s: 2 windows
    return [torch.tensor(w, dtype=torch.float32) for w in (short_a, short_b, long)]


@pytest.mark.parametrize("pad", ["end", "center"])
@pytest.mark.parametrize("crop", ["start", "center", "windows"])
def test_batched_equals_one_by_one(encoder, crop, pad):
    waves = _waves()
    embedder = SoundCLIPEmbedder(encoder, crop=crop, pad=pad, max_batch=3)
    got = embedder.embed_audio_batch(waves)
    expected = torch.stack(
        [embed_audio(encoder, w, sample_rate=SR, crop=crop, pad=pad) for w in waves]
    )
    assert got.shape == (3, 32)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    if crop == "center":  # the long clip's crop really moved
        start = SoundCLIPEmbedder(encoder, crop="start").embed_audio_batch(waves[2:])
        assert not torch.allclose(start[0], got[2], atol=1e-3)
    if pad == "center":  # the short clips moved on the canvas
        end = SoundCLIPEmbedder(encoder, crop=crop).embed_audio_batch(waves[:2])
        assert not torch.allclose(end, got[:2], atol=1e-3)


def test_identity_names_checksum_crop_pad_and_reference(soundclip_file, encoder):
    a = SoundCLIPEmbedder.from_checkpoint(soundclip_file, crop="start")
    assert isinstance(a, AudioEmbedder)
    digest = sha256_file(soundclip_file)
    assert a.identity == f"soundclip-resnet18:sha256={digest}:crop=start:pad=end:db=window"
    assert SoundCLIPEmbedder(encoder, crop="windows").identity.endswith(
        ":crop=windows:pad=end:db=window:hop=864"
    )
    authors = SoundCLIPEmbedder.from_checkpoint(
        soundclip_file, crop="center", pad="center", db_reference="clip"
    )
    assert authors.identity == f"soundclip-resnet18:sha256={digest}:crop=center:pad=center:db=clip"
    # an encoder built in memory is named by its parameters
    in_memory = SoundCLIPEmbedder(encoder).identity
    assert in_memory.startswith("soundclip-resnet18:sha256=") and in_memory != a.identity
    with pytest.raises(ConfigError, match="unknown crop policy 'random' for evaluation"):
        SoundCLIPEmbedder(encoder, crop="random")
    with pytest.raises(ConfigError, match="unknown pad policy 'random' for evaluation"):
        SoundCLIPEmbedder(encoder, pad="random")
    with pytest.raises(ConfigError, match="unknown dB reference 'file'"):
        SoundCLIPEmbedder(encoder, db_reference="file")


def test_the_cache_is_keyed_by_the_pad(tmp_path, encoder):
    data = load_esc50(write_esc50(tmp_path / "esc50").root)
    end = embed_dataset(data, SoundCLIPEmbedder(encoder), workers=0)
    centred = embed_dataset(data, SoundCLIPEmbedder(encoder, pad="center"), workers=0)
    assert not end.from_cache and not centred.from_cache  # another key, not end's embeddings
    assert centred.cache_path != end.cache_path
    assert not torch.allclose(centred.embeddings, end.embeddings, atol=1e-3)
    again = embed_dataset(data, SoundCLIPEmbedder(encoder, pad="center"), workers=0)
    assert again.from_cache
    torch.testing.assert_close(again.embeddings, centred.embeddings)


class TestFromGuidance:
    def test_builtin_audio_guidance_resolves_a_known_weights_name(self, soundclip_file):
        registries = load_registries(entry_points=False)
        local = registries.weights.local_path("soundclip-resnet18-57")
        local.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(soundclip_file, local)  # as if downloaded before
        embedder = embedder_from_guidance(
            registries,
            "audio",
            "soundclip-resnet18-57",
            crop="center",
            pad="center",
            db_reference="clip",
        )
        assert isinstance(embedder, SoundCLIPEmbedder)
        assert (embedder.crop, embedder.pad, embedder.db_reference) == ("center", "center", "clip")
        assert (embedder.frontend.pad, embedder.frontend.db_reference) == ("center", "clip")
        assert embedder.weights_sha256 == sha256_file(soundclip_file)

    def test_builtin_audio_guidance_takes_a_path(self, soundclip_file):
        registries = load_registries(entry_points=False)
        embedder = embedder_from_guidance(registries, "audio", str(soundclip_file))
        assert embedder.identity.endswith(
            f"{sha256_file(soundclip_file)}:crop=start:pad=end:db=window"
        )

    def test_unknown_weights_name(self):
        registries = load_registries(entry_points=False)
        with pytest.raises(WeightsError, match="unknown weights name 'nope'.*no such file either"):
            embedder_from_guidance(registries, "audio", "nope")

    def test_third_party_guidance_builds_its_own(self, tmp_path):
        registries = load_registries(entry_points=False, plugins=[oracle_plugin])
        table = tmp_path / "table.pt"
        torch.save({"table": torch.eye(4)}, table)
        embedder = embedder_from_guidance(registries, "oracle-audio", str(table), crop="windows")
        assert embedder is oracle_plugin.INSTANCES[-1]
        assert embedder.identity == f"oracle:{sha256_file(table)}:windows:4.000000"

    def test_a_plugin_without_canvas_settings_is_asked_without_them(self, tmp_path):
        registries = load_registries(entry_points=False, plugins=[oracle_plugin])
        table = tmp_path / "table.pt"
        torch.save({"table": torch.eye(4)}, table)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the defaults ask for nothing: no warning
            embedder_from_guidance(registries, "oracle-audio", str(table))
        with pytest.warns(UserWarning, match="takes no pad=center, db_reference=clip setting"):
            embedder = embedder_from_guidance(
                registries, "oracle-audio", str(table), pad="center", db_reference="clip"
            )
        assert embedder is oracle_plugin.INSTANCES[-1]

    def test_guidance_without_an_audio_embedder(self):
        registries = load_registries(entry_points=False)
        with pytest.raises(PluginError, match="guidance 'text' cannot embed audio"):
            embedder_from_guidance(registries, "text", "x")
        with pytest.raises(UnknownPluginError, match="unknown guidance 'audoi'"):
            embedder_from_guidance(registries, "audoi", "x")

    def test_the_builtin_is_asked_like_any_plugin(self, soundclip_file, monkeypatch):
        """No special case for the built-in: its class answers through the core interface."""
        import soundguide
        from soundguide.core import interfaces
        from soundguide.plugins.audio import AudioGuidance

        assert interfaces.AudioEmbedder is AudioEmbedder
        assert AudioGuidance.audio_embedder.__func__ is not (
            soundguide.Guidance.audio_embedder.__func__
        )
        registries = load_registries(entry_points=False)
        asked = []

        def refuse(cls, encoder, context, crop):
            asked.append((cls.__name__, encoder, crop, context.trust_checkpoint))

        monkeypatch.setattr(AudioGuidance, "audio_embedder", classmethod(refuse))
        with pytest.raises(PluginError, match="guidance 'audio' cannot embed audio"):
            embedder_from_guidance(registries, "audio", str(soundclip_file), trust=True)
        assert asked == [("AudioGuidance", str(soundclip_file), "start", True)]

    def test_an_answer_that_is_no_embedder(self, monkeypatch):
        from soundguide.plugins.audio import AudioGuidance

        registries = load_registries(entry_points=False)
        monkeypatch.setattr(AudioGuidance, "audio_embedder", classmethod(lambda *a: object()))
        with pytest.raises(PluginError, match="object is not an audio embedder: it lacks"):
            embedder_from_guidance(registries, "audio", "x")


class TestRandomOrTiny:
    """The documented rule: a shape no released model has, or normalization layers at
    their initial values; released CLIP files are also known by their sha256."""

    def test_tiny_soundclip(self, encoder):
        check = soundclip_weights_check(encoder)  # the tests' 32-dim encoder
        assert check["random_or_tiny"] and "embedding size 32" in check["why"]

    def test_random_full_size_soundclip(self):
        model = random_soundclip(embed_dim=512, seed=0)
        check = soundclip_weights_check(model)
        assert check["random_or_tiny"] and "initial values" in check["why"]
        with torch.no_grad():  # trained statistics: no sign of random weights
            for name, buffer in model.named_buffers():
                if name.endswith("running_mean"):
                    buffer.normal_(0, 0.1)
        assert soundclip_weights_check(model) == {"random_or_tiny": False, "why": None}

    def test_the_demo_s_files_are_marked(self, tmp_path):
        from soundguide.demo import write_demo_inputs
        from soundguide.encoders.clip import load_clip

        folder = tmp_path / "demo-inputs"
        write_demo_inputs(folder)
        audio = SoundCLIPEmbedder.from_checkpoint(folder / "soundclip-random.pt")
        assert describe_embedder(audio)["weights_check"]["random_or_tiny"]
        path = folder / "clip-tiny.pt"
        text = describe_clip_file(str(path), path, load_clip(path))
        assert text["random_or_tiny"] and text["sha256"] == sha256_file(path)
        assert "not a released CLIP model's" in text["why"]

    def test_tiny_clip_and_the_initialization_rule(self, monkeypatch):
        model = tiny_clip_reference(seed=0)
        check = clip_weights_check(model)
        assert check["random_or_tiny"] and check["shape_of"] is None
        # were the tiny shape a released one, its untouched layer norms would still tell
        shape = (32, 224, 2, 64, 32, 64, 2)
        assert shape == tuple(
            TINY_CLIP[k]
            for k in (
                "embed_dim",
                "image_resolution",
                "vision_layers",
                "vision_width",
                "vision_patch_size",
                "transformer_width",
                "transformer_layers",
            )
        )
        monkeypatch.setitem(RELEASED_CLIP_SHAPES, "tiny", shape)
        check = clip_weights_check(model)
        assert check["shape_of"] == "tiny" and check["random_or_tiny"]
        assert "layer norms are at their initial values" in check["why"]
        with torch.no_grad():
            model.ln_final.weight.mul_(1.5)
        assert not clip_weights_check(model)["random_or_tiny"]

    def test_released_shapes_and_files(self):
        with torch.device("meta"):  # ViT-B/32's architecture, no memory
            vit = clip.model.CLIP(**VIT_B_32)
        check = clip_weights_check(vit)
        assert check["shape_of"] == "ViT-B/32" and not check["random_or_tiny"]
        digest = CLIP_MODELS["ViT-B/32"].split("/")[0]
        assert clip_weights_check(vit, digest)["released"] == "ViT-B/32"
