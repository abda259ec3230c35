"""Evaluation protocols: the authors' posted zero-shot script reproduced, the presets, and
when a result may stand beside the paper's number."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from torch import nn

from soundguide.core.errors import ConfigError
from soundguide.encoders.audio import load_audio
from soundguide.encoders.soundclip import NUM_FRAMES
from soundguide.evaluation import (
    DEFAULT_TEMPLATES,
    PROTOCOLS,
    SoundCLIPEmbedder,
    get_protocol,
    load_esc50,
    paper_comparison,
)
from soundguide.evaluation.datasets import Clip
from soundguide.evaluation.encoding import DatasetEmbeddings
from tests.encoders.reference_frontend import authors_zeroshot_input
from tests.evaluation.conftest import write_esc50

SR = 44100


class RecordingEncoder(nn.Module):
    """Stands in for the ResNet18: keeps the (B, 1, 128, 512) inputs it receives."""

    embed_dim = 8

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(self.embed_dim))
        self.inputs: list[torch.Tensor] = []

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        self.inputs.append(spec.detach().clone())
        return self.bias.expand(spec.shape[0], -1) + spec.mean()


def recording(samples: int, seed: int) -> np.ndarray:
    """Two tones, amplitude modulation and a noise floor, fading in from -26 dB: in a clip
    longer than the canvas the loudest bin lies after the centred window."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / SR
    f1, f2, rate = rng.uniform(150, 900), rng.uniform(1500, 6000), rng.uniform(0.3, 3)
    y = 0.4 * np.sin(2 * np.pi * f1 * t) + 0.15 * np.sin(2 * np.pi * f2 * t)
    y = y * (0.6 + 0.4 * np.sin(2 * np.pi * rate * t)) + 0.03 * rng.standard_normal(samples)
    return (y * np.linspace(0.05, 1.0, samples)).astype(np.float32)


# shorter than the canvas (ESC-50 is 5 s, UrbanSound8K up to 4 s), one frame short of it
# (centred = at the start), exactly it (w = 864 is cropped at j = 0), and longer by an
# even (256 frames) and an odd (885 frames) excess
SAMPLES = (
    *(int(s * SR) for s in (0.3, 1.0, 2.5, 4.0, 5.0, 9.99)),
    862 * 512,
    863 * 512,
    int(13.0 * SR),
    int(20.3 * SR),
)
MOVED = [i for i, n in enumerate(SAMPLES) if not NUM_FRAMES - 1 <= 1 + n // 512 <= NUM_FRAMES]
"""The clips whose input the pad, crop or dB reference changes."""


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> list[Path]:
    """:data:`SAMPLES` as 32-bit float WAV files at 44.1 kHz."""
    folder = tmp_path_factory.mktemp("clips")
    paths = []
    for i, samples in enumerate(SAMPLES):
        path = folder / f"{i}.wav"
        sf.write(path, recording(samples, seed=i), SR, subtype="FLOAT")
        paths.append(path)
    return paths


class TestAuthorsParity:
    """``--protocol authors`` gives the encoder exactly the input of the authors' script."""

    def _inputs(self, files: list[Path], **settings: str) -> list[np.ndarray]:
        encoder = RecordingEncoder()
        embedder = SoundCLIPEmbedder(encoder, **settings)
        for path in files:  # as embed_dataset reads them: mono float32 at 44.1 kHz
            embedder.embed_audio_batch([load_audio(path, SR)])
        return [x[0].numpy() for x in encoder.inputs]

    def test_identical_inputs(self, files):
        authors = PROTOCOLS["authors"]
        got = self._inputs(
            files, crop=authors.crop, pad=authors.pad, db_reference=authors.db_reference
        )
        frames = []
        for path, x in zip(files, got, strict=True):
            expected = authors_zeroshot_input(str(path))
            assert x.shape == expected.shape == (1, 128, 512)
            np.testing.assert_allclose(x, expected, atol=1e-5, rtol=0, err_msg=path.name)
            frames.append(1 + sf.info(path).frames // 512)
        assert min(frames) < NUM_FRAMES - 1 and max(frames) > NUM_FRAMES
        assert NUM_FRAMES - 1 in frames and NUM_FRAMES in frames

    def test_the_default_protocol_differs(self, files):
        """End padding and the window's dB reference: other inputs, for every clip here."""
        got = self._inputs(files)  # soundguide's: start, end, window
        assert len(MOVED) == 8
        for i in MOVED:
            difference = np.abs(got[i] - authors_zeroshot_input(str(files[i]))).max()
            assert difference > (0.1 if SAMPLES[i] < 864 * 512 else 0.02), files[i].name


class TestPresets:
    def test_the_two_protocols(self):
        assert get_protocol("soundguide") == replace(
            PROTOCOLS["soundguide"],
            crop="start",
            pad="end",
            db_reference="window",
            labels="clean",
            templates=DEFAULT_TEMPLATES,
        )
        authors = get_protocol("authors")
        assert (authors.crop, authors.pad, authors.db_reference) == ("center", "center", "clip")
        assert (authors.labels, authors.templates) == ("raw", ("{label}",))
        assert not authors.clean_labels and authors.overridden == ()

    def test_explicit_settings_win_and_are_recorded(self):
        authors = get_protocol("authors")
        changed = authors.with_settings(crop="start", pad=None, labels="raw", templates=None)
        assert changed.crop == "start" and changed.pad == "center"
        assert changed.overridden == ("crop",)  # labels=raw is the protocol's own value
        assert changed.label() == "authors (crop=start)"
        again = changed.with_settings(templates=("a {label}", "{label}"))
        assert again.overridden == ("crop", "templates")
        assert again.label() == "authors (crop=start, templates=a {label}|{label})"
        assert authors.with_settings() is authors

    def test_bad_settings(self):
        with pytest.raises(ConfigError, match="unknown evaluation protocol 'author'.*'authors'"):
            get_protocol("author")
        with pytest.raises(ConfigError, match="labels must be raw or clean"):
            get_protocol("authors").with_settings(labels="cleaned")
        with pytest.raises(ConfigError, match="prompt template"):
            get_protocol("authors").with_settings(templates=("no label",))
        with pytest.raises(ConfigError, match="unknown protocol setting"):
            get_protocol("authors").with_settings(hop=3)


class TestPaperComparison:
    @pytest.fixture
    def full(self, tmp_path):
        """An ESC-50 with the official counts (the clips need not exist to be counted)."""
        data = load_esc50(write_esc50(tmp_path / "esc50").root)
        clips = tuple(
            Clip(path=data.clips[0].path, label=i % 50, fold=1 + i % 5) for i in range(2000)
        )
        names = tuple(f"class_{i}" for i in range(50))
        return replace(data, clips=clips, class_names=names, class_ids=tuple(range(50)))

    @staticmethod
    def encoding(skipped: int = 0) -> DatasetEmbeddings:
        return DatasetEmbeddings(
            embeddings=torch.zeros(1, 1),
            indices=[0],
            skipped=[{"path": f"{i}.wav", "error": "bad"} for i in range(skipped)],
        )

    def test_comparable(self, full):
        trained = {"weights_check": {"random_or_tiny": False, "why": None}}
        clip = {"random_or_tiny": False, "why": None, "released": "ViT-B/32"}
        result = paper_comparison(
            full, self.encoding(), trained, protocol=PROTOCOLS["authors"], text_weights=clip
        )
        assert result == {"comparable": True, "not_comparable_because": []}
        assert paper_comparison(full, self.encoding(), trained)["comparable"]  # the probe

    def test_each_reason(self, full):
        random = {"weights_check": {"random_or_tiny": True, "why": "never trained"}}
        clip = {"random_or_tiny": True, "why": "tiny"}
        reasons = paper_comparison(
            replace(full, clips=full.clips[:-400]),
            self.encoding(skipped=2),
            random,
            protocol=PROTOCOLS["authors"].with_settings(pad="end"),
            text_weights=clip,
        )["not_comparable_because"]
        assert reasons == [
            "the data is not the official full set (1600 of the official 2000 clips)",
            "2 unreadable clip(s) skipped",
            "the audio encoder is random or tiny: never trained",
            "the CLIP model is random or tiny: tiny",
            "the paper used the 'authors' protocol, this run authors changed (pad)",
        ]
