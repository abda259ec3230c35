from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from soundguide.core.errors import ConfigError, PluginError, UnknownPluginError, WeightsError
from soundguide.core.files import sha256_file
from soundguide.core.plugins import load_registries
from soundguide.encoders.soundclip import SoundCLIPEncoder, embed_audio, load_soundclip
from soundguide.evaluation import AudioEmbedder, SoundCLIPEmbedder, embedder_from_guidance
from tests.evaluation import oracle_plugin

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


@pytest.mark.parametrize("crop", ["start", "center", "windows"])
def test_batched_equals_one_by_one(encoder, crop):
    waves = _waves()
    embedder = SoundCLIPEmbedder(encoder, crop=crop, max_batch=3)
    got = embedder.embed_audio_batch(waves)
    expected = torch.stack([embed_audio(encoder, w, sample_rate=SR, crop=crop) for w in waves])
    assert got.shape == (3, 32)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    if crop == "center":  # the long clip's crop really moved
        start = SoundCLIPEmbedder(encoder, crop="start").embed_audio_batch(waves[2:])
        assert not torch.allclose(start[0], got[2], atol=1e-3)


def test_identity_names_checksum_and_crop(soundclip_file, encoder):
    a = SoundCLIPEmbedder.from_checkpoint(soundclip_file, crop="start")
    assert isinstance(a, AudioEmbedder)
    digest = sha256_file(soundclip_file)
    assert a.identity == f"soundclip-resnet18:sha256={digest}:crop=start"
    assert SoundCLIPEmbedder(encoder, crop="windows").identity.endswith(":crop=windows:hop=864")
    # an encoder built in memory is named by its parameters
    in_memory = SoundCLIPEmbedder(encoder).identity
    assert in_memory.startswith("soundclip-resnet18:sha256=") and in_memory != a.identity
    with pytest.raises(ConfigError, match="unknown crop policy 'random' for evaluation"):
        SoundCLIPEmbedder(encoder, crop="random")


class TestFromGuidance:
    def test_builtin_audio_guidance_resolves_a_known_weights_name(self, soundclip_file):
        registries = load_registries(entry_points=False)
        local = registries.weights.local_path("soundclip-resnet18-57")
        local.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(soundclip_file, local)  # as if downloaded before
        embedder = embedder_from_guidance(
            registries, "audio", "soundclip-resnet18-57", crop="center"
        )
        assert isinstance(embedder, SoundCLIPEmbedder)
        assert embedder.crop == "center"
        assert embedder.weights_sha256 == sha256_file(soundclip_file)

    def test_builtin_audio_guidance_takes_a_path(self, soundclip_file):
        registries = load_registries(entry_points=False)
        embedder = embedder_from_guidance(registries, "audio", str(soundclip_file))
        assert embedder.identity.endswith(f"{sha256_file(soundclip_file)}:crop=start")

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
