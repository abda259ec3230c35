from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import librosa
import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from soundguide.core.errors import AudioError, CheckpointError
from soundguide.encoders.audio import load_audio, prepare_waveform
from soundguide.encoders.soundclip import (
    NUM_FRAMES,
    RESNET18_57,
    SoundCLIPEncoder,
    SoundCLIPFrontend,
    crop_starts,
    embed_audio,
    fit_frames,
    frame_span,
    load_soundclip,
    pad_offsets,
    reflect_pad,
    spectrogram_to_input,
    window_starts,
)
from tests.encoders.reference_frontend import reference_frontend, reference_spectrogram
from tests.factories import random_soundclip

SR = 44100
MANIFEST = Path(__file__).resolve().parents[1] / "data" / "soundclip_resnet18.keys.json"
SHARED_AUDIO = Path(__file__).resolve().parents[2].parent / "shared" / "audio"
PARITY_ATOL = 1e-3


def signal(kind: str, n: int, seed: int = 0) -> np.ndarray:
    """Real-like test audio at 44.1 kHz."""
    t = np.arange(n) / SR
    rng = np.random.default_rng(seed)
    if kind == "tones":
        y = 0.5 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 3100 * t)
        y *= 0.6 + 0.4 * np.sin(2 * np.pi * 0.7 * t)
    elif kind == "chirp":
        y = 0.5 * np.sin(2 * np.pi * (80 * t + 900 * t**2))
    elif kind == "noise":
        y = 0.1 * rng.standard_normal(n)
        y = np.convolve(y, np.ones(8) / 8, mode="same")  # coloured
    else:  # clicks in noise: transients and a wide dynamic range
        y = 0.01 * rng.standard_normal(n)
        y[:: SR // 3] += 0.9
    return y.astype(np.float32)


@pytest.fixture(scope="module")
def frontend() -> SoundCLIPFrontend:
    return SoundCLIPFrontend()


@pytest.fixture(scope="module")
def encoder() -> SoundCLIPEncoder:
    return random_soundclip(embed_dim=512, seed=0)


def run(frontend: SoundCLIPFrontend, y: np.ndarray, **kwargs) -> np.ndarray:
    return frontend(torch.from_numpy(y)[None], **kwargs)[0].numpy()


def window_reference(y: np.ndarray, start: int = 0) -> np.ndarray:
    """librosa + OpenCV with the dB reference of the 864-frame window, not the whole clip's.

    Mel power of the whole clip, frames ``start .. start + 863``, then
    ``power_to_db(ref=np.max) / 80 + 1`` of those frames alone, zero-padded
    to 864 frames, ``cv2.resize`` and the reshape. Equals :func:`reference_frontend`
    for clips of at most 864 frames. Output: (1, 128, 512).
    """
    power = librosa.feature.melspectrogram(
        y=y, sr=SR, n_fft=2048, hop_length=512, n_mels=128, pad_mode="reflect"
    )
    window = librosa.power_to_db(power[:, start : start + NUM_FRAMES], ref=np.max) / 80.0 + 1
    canvas = np.zeros((128, NUM_FRAMES))
    canvas[:, : window.shape[1]] = window
    return cv2.resize(canvas, (128, 512)).reshape(1, 128, 512)


def ramped(kind: str, n: int, seed: int = 0) -> np.ndarray:
    """``signal`` fading in from -26 dB: every 10 s window has its own loudest bin."""
    return (signal(kind, n, seed) * np.linspace(0.05, 1.0, n)).astype(np.float32)


class TestParity:
    """The torch front end against the librosa + OpenCV reference of the original code."""

    @pytest.mark.parametrize("kind", ["tones", "chirp", "noise", "clicks"])
    @pytest.mark.parametrize(
        "n", [1, 300, 1024, 1700, 2048, 30_000, 441_000, NUM_FRAMES * 512 - 1, 500_000]
    )
    def test_matches_reference(self, frontend, kind, n):
        y = signal(kind, n)
        got = run(frontend, y)
        assert got.shape == (1, 128, 512)
        # up to 864 frames the original's whole-clip dB reference is the window's
        expected = reference_frontend(y) if 1 + n // 512 <= NUM_FRAMES else window_reference(y)
        np.testing.assert_allclose(got, expected, atol=PARITY_ATOL, rtol=0)

    def test_long_clips_take_the_window_s_loudest_bin(self, frontend):
        """The one deliberate difference from the original: the dB reference of a crop."""
        y = ramped("tones", 3 * NUM_FRAMES * 512)  # the loudest bin is at the end
        got = run(frontend, y)
        np.testing.assert_allclose(got, window_reference(y), atol=PARITY_ATOL, rtol=0)
        original = reference_frontend(y)  # the whole clip's reference: the window is darker
        assert got.max() > 0.98 and original.max() < 0.9

    def test_full_spectrogram_matches_librosa(self, frontend):
        y = signal("chirp", 200_000)
        got = frontend.spectrogram(torch.from_numpy(y))[0].numpy()
        ref = reference_spectrogram(y)
        assert got.shape == ref.shape == (128, 1 + 200_000 // 512)
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)

    @pytest.mark.parametrize("crop", ["center", "random"])
    def test_crops_match_reference_offset(self, frontend, crop):
        y = ramped("tones", 600_000)
        frames = 1 + 600_000 // 512
        generator = torch.Generator().manual_seed(3)
        (start,) = crop_starts(frames, 1, crop, generator=torch.Generator().manual_seed(3))
        assert 0 < start < frames - NUM_FRAMES
        got = run(frontend, y, crop=crop, generator=generator)
        np.testing.assert_allclose(got, window_reference(y, start=start), atol=PARITY_ATOL)

    @pytest.mark.skipif(not SHARED_AUDIO.is_dir(), reason="no ../shared/audio in this checkout")
    @pytest.mark.parametrize(
        "name", sorted(p.name for p in SHARED_AUDIO.glob("*.wav")) if SHARED_AUDIO.is_dir() else []
    )
    def test_demo_recordings(self, frontend, name):
        y = load_audio(SHARED_AUDIO / name, SR).numpy()  # 48 kHz files are resampled first
        np.testing.assert_allclose(run(frontend, y), reference_frontend(y), atol=PARITY_ATOL)

    @pytest.mark.parametrize("dtype", [np.float32, np.float64])
    def test_resize_is_opencv_inter_linear(self, dtype):
        spec = np.random.default_rng(1).random((128, NUM_FRAMES)).astype(dtype)
        expected = cv2.resize(spec, (128, 512)).reshape(1, 128, 512)
        got = spectrogram_to_input(torch.from_numpy(spec)[None])[0].numpy()
        np.testing.assert_allclose(got, expected, atol=1e-6)

    @pytest.mark.parametrize("length", [1, 2, 3, 7, 1024, 1025, 5000])
    def test_reflect_pad_is_numpy_reflect(self, length):
        x = np.random.default_rng(length).standard_normal(length)
        got = reflect_pad(torch.from_numpy(x)[None], 1024)[0].numpy()
        np.testing.assert_array_equal(got, np.pad(x, 1024, mode="reflect"))


class TestFrontend:
    def test_buffers_are_registered(self, frontend):
        buffers = dict(frontend.named_buffers())
        assert buffers["mel.spectrogram.window"].shape == (2048,)
        assert buffers["mel.mel_scale.fb"].shape == (1025, 128)

    def test_dtype_follows_the_module(self):
        y = torch.from_numpy(signal("tones", 50_000))
        single = SoundCLIPFrontend()(y)
        double = SoundCLIPFrontend().double()(y)
        assert double.dtype == torch.float64
        torch.testing.assert_close(double.float(), single, atol=1e-5, rtol=0)

    def test_batch_items_are_normalized_independently(self, frontend):
        a, b = signal("tones", 60_000), signal("noise", 60_000, seed=2) * 0.01
        both = frontend(torch.from_numpy(np.stack([a, b])))
        torch.testing.assert_close(both[0], frontend(torch.from_numpy(a))[0])
        torch.testing.assert_close(both[1], frontend(torch.from_numpy(b))[0])

    def test_start_crop_is_deterministic(self, frontend):
        y = torch.from_numpy(signal("chirp", 700_000))
        torch.testing.assert_close(frontend(y), frontend(y), rtol=0, atol=0)
        center = frontend(y, crop="center")
        assert not torch.equal(frontend(y), center)

    def test_random_crop_is_seeded(self, frontend):
        y = torch.from_numpy(signal("chirp", 900_000))
        first = frontend(y, crop="random", generator=torch.Generator().manual_seed(5))
        again = frontend(y, crop="random", generator=torch.Generator().manual_seed(5))
        torch.testing.assert_close(first, again, rtol=0, atol=0)
        starts = {
            crop_starts(
                1 + 900_000 // 512, 1, "random", generator=torch.Generator().manual_seed(s)
            )[0]
            for s in range(8)
        }
        assert len(starts) > 1 and all(0 <= s <= 1 + 900_000 // 512 - NUM_FRAMES for s in starts)

    def test_crop_has_no_effect_on_short_clips(self, frontend):
        y = torch.from_numpy(signal("tones", 100_000))
        torch.testing.assert_close(frontend(y, crop="random"), frontend(y, crop="start"))

    def test_unknown_crop(self, frontend):
        with pytest.raises(AudioError, match="unknown crop policy 'middle'"):
            frontend(torch.ones(3000), crop="middle")

    @pytest.mark.parametrize(
        ("frames", "expected"),
        [
            (10, [0]),
            (NUM_FRAMES, [0]),
            (NUM_FRAMES + 1, [0, 1]),
            (2 * NUM_FRAMES, [0, NUM_FRAMES]),
            (2 * NUM_FRAMES + 100, [0, NUM_FRAMES, NUM_FRAMES + 100]),
        ],
    )
    def test_window_starts(self, frames, expected):
        assert window_starts(frames) == expected

    def test_windows_are_crops_of_the_whole_clip(self, frontend):
        n = 2 * NUM_FRAMES * 512 + 60_000  # 2.1 windows -> 3
        y = torch.from_numpy(ramped("tones", n))
        windows = frontend.windows(y)
        frames = 1 + n // 512
        assert windows.shape == (1, 3, 1, 128, 512)
        for w, start in enumerate(window_starts(frames)):
            expected = window_reference(y.numpy(), start=start)  # each its own dB reference
            np.testing.assert_allclose(windows[0, w].numpy(), expected, atol=PARITY_ATOL)
        assert frontend.windows(y, hop_frames=432).shape[1] == len(window_starts(frames, 432))
        assert frontend.windows(y[:1000]).shape == (1, 1, 1, 128, 512)

    @pytest.mark.parametrize(
        "bad", [torch.ones(2, 3, 4), torch.ones(0), torch.ones(10, dtype=torch.int64)]
    )
    def test_bad_input(self, frontend, bad):
        with pytest.raises(AudioError, match="waveform"):
            frontend(bad)


class TestWindowPower:
    """Frames computed from a window's samples equal the whole clip's frames."""

    @pytest.mark.parametrize(
        "n",
        [
            1,
            5,
            1024,
            1025,
            2048,
            3000,
            NUM_FRAMES * 512 - 1,
            NUM_FRAMES * 512 + 1024,
            NUM_FRAMES * 512 + 1535,
            1_000_003,
        ],
    )
    def test_equals_the_whole_clip_s_frames(self, frontend, n):
        y = torch.from_numpy(ramped("clicks", n))
        whole = frontend.power(y)[0]
        frames = whole.shape[-1]
        firsts = {0, 1, 2, frames // 2, max(0, frames - NUM_FRAMES), frames - 2, frames - 1}
        for count in (1, 3, NUM_FRAMES):
            for first in sorted(f for f in firsts if 0 <= f < frames):
                lo, hi = frame_span(first, count, n)
                got = frontend.window_power(y[lo:hi], first, n, count)[0]
                expected = whole[:, first : first + count]  # the reflected ends included
                assert got.shape == expected.shape, (first, count)
                torch.testing.assert_close(
                    got, expected, rtol=1e-5, atol=1e-6 * float(expected.max()), msg=(first, count)
                )

    def test_span_covers_the_reflected_ends(self):
        assert frame_span(0, NUM_FRAMES, 10**7) == (0, 863 * 512 + 1024)
        assert frame_span(100, NUM_FRAMES, 10**7) == (100 * 512 - 1024, 963 * 512 + 1024)
        assert frame_span(0, 1, 10**7) == (0, 1025)  # the left reflection reads sample 1024
        frames = 1 + 10**7 // 512
        assert frame_span(frames - 1, 1, 10**7) == ((frames - 1) * 512 - 1024, 10**7)
        n = 512 * 20_000  # the last frame is centred on the last sample but one's successor
        assert frame_span(20_000, 1, n) == (n - 1025, n)  # the right reflection reads n - 1025
        assert frame_span(0, NUM_FRAMES, 3000) == (0, 3000)

    def test_wrong_segment(self, frontend):
        with pytest.raises(AudioError, match=r"expected the 443904 samples \[50176, 494080\)"):
            frontend.window_power(torch.ones(1000), 100, 10**6)


HYPOTHESIS = settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@st.composite
def waveforms(draw, max_seconds: float = 15.0):
    rate = draw(st.sampled_from([8000, 16000, 22050, 44100, 48000]))
    channels = draw(st.integers(1, 4))
    length = draw(st.integers(1, int(max_seconds * rate)))
    seed = draw(st.integers(0, 2**32 - 1))
    amp = draw(st.floats(0.05, 1.0))
    rng = np.random.default_rng(seed)
    t = np.arange(length) / rate
    freqs = rng.uniform(50, rate / 2.5, size=(channels, 1))
    wave = np.sin(2 * np.pi * freqs * t) + 0.3 * rng.standard_normal((channels, length))
    wave = wave / np.abs(wave).max(axis=1, keepdims=True)  # every channel peaks at 1
    return (amp * wave).astype(np.float32), rate


class TestProperties:
    @HYPOTHESIS
    @given(waveforms())
    def test_any_length_rate_and_channels(self, frontend, case):
        wave, rate = case
        try:
            mono = prepare_waveform(wave, rate, SR)
        except AudioError as exc:  # random channels may cancel; that is the only excuse
            assert "channels cancel" in str(exc)
            return
        out = frontend(mono)
        assert out.shape == (1, 1, 128, 512)
        assert torch.isfinite(out).all()
        assert out.min() >= 0 and out.max() <= 1

    @HYPOTHESIS
    @given(waveforms(max_seconds=3.0), st.floats(0.5, 20.0))
    def test_gain_invariance(self, frontend, case, gain):
        wave, rate = case
        y = torch.from_numpy(wave[0])
        torch.testing.assert_close(frontend(y * gain), frontend(y), atol=1e-4, rtol=0)

    @HYPOTHESIS
    @given(waveforms(max_seconds=3.0))
    def test_mono_equals_duplicated_stereo(self, frontend, case):
        wave, rate = case
        mono = prepare_waveform(wave[0], rate, SR)
        stereo = prepare_waveform(np.stack([wave[0], wave[0]]), rate, SR)
        torch.testing.assert_close(frontend(stereo), frontend(mono), atol=1e-6, rtol=0)


class TestEncoder:
    def test_keys_and_shapes_equal_the_manifest(self, encoder):
        manifest = [(k, list(shape), dtype) for k, shape, dtype in json.loads(MANIFEST.read_text())]
        ours = [(k, list(v.shape), str(v.dtype)) for k, v in encoder.state_dict().items()]
        assert ours == manifest

    def test_forward_shape_and_gradient(self, encoder):
        spec = torch.rand(2, 1, 128, 512, requires_grad=True)
        out = encoder(spec)
        assert out.shape == (2, 512) and torch.isfinite(out).all()
        out.sum().backward()
        assert spec.grad is not None and spec.grad.abs().sum() > 0

    def test_wrong_input_shape(self, encoder):
        with pytest.raises(AudioError, match=r"\(B, 1, 128, 512\), got \(2, 128, 512\)"):
            encoder(torch.rand(2, 128, 512))


@pytest.fixture(scope="module")
def state(encoder) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in encoder.state_dict().items()}


def assert_same_weights(model: SoundCLIPEncoder, state: dict[str, torch.Tensor]) -> None:
    assert not model.training
    loaded = model.state_dict()
    assert loaded.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key


class TestLoadSoundCLIP:
    @pytest.mark.parametrize(
        "wrap",
        [
            lambda s: s,
            lambda s: {f"module.{k}": v for k, v in s.items()},
            lambda s: {"state_dict": s, "epoch": 57},
            lambda s: {"model": {f"module.{k}": v for k, v in s.items()}},
        ],
        ids=["plain", "module-prefix", "state_dict-wrapper", "model-wrapper+prefix"],
    )
    def test_checkpoint_layouts(self, tmp_path, state, wrap):
        path = tmp_path / "resnet18.pth"
        torch.save(wrap(state), path)
        assert_same_weights(load_soundclip(path), state)

    def test_from_state_dict_computes_the_same(self, encoder, state):
        model = load_soundclip(state)
        assert_same_weights(model, state)
        probe = torch.rand(1, 1, 128, 512, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            torch.testing.assert_close(model(probe), encoder(probe))

    def test_missing_batchnorm_counters_are_tolerated(self, state):
        trimmed = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
        assert_same_weights(load_soundclip(trimmed), state)

    def test_missing_unexpected_and_misshapen_keys(self, state):
        broken = dict(state)
        del broken["conv.bias"]
        broken["projection.weight"] = torch.zeros(3)
        broken["feature_extractor.conv1.weight"] = torch.zeros(64, 1, 7, 7)
        with pytest.raises(CheckpointError) as info:
            load_soundclip(broken)
        message = str(info.value)
        assert "\n" not in message
        assert "missing keys conv.bias" in message
        assert "unexpected keys projection.weight" in message
        assert "feature_extractor.conv1.weight (64, 1, 7, 7) vs (64, 3, 7, 7)" in message

    def test_not_a_state_dict(self, tmp_path):
        torch.save(
            {"g_ema": {"x": torch.zeros(1)}, "latent_avg": torch.zeros(3), "iter": 5},
            tmp_path / "g.pt",
        )
        with pytest.raises(CheckpointError, match="does not fit|not a state dict"):
            load_soundclip(tmp_path / "g.pt")

    def test_not_a_checkpoint(self, tmp_path):
        (tmp_path / "x.pth").write_bytes(b"garbage" * 100)
        with pytest.raises(CheckpointError, match="cannot read checkpoint"):
            load_soundclip(tmp_path / "x.pth")

    def test_known_weights_entry(self):
        assert RESNET18_57.name == "soundclip-resnet18-57"
        assert RESNET18_57.url == "https://kr.object.ncloudstorage.com/cvpr2022/resnet18_57.pth"
        assert RESNET18_57.filename == "resnet18_57.pth"
        assert RESNET18_57.license == "CC BY-NC-SA 4.0"


class TinyAudioEncoder(torch.nn.Module):
    """Stands in for the ResNet18 where only the plumbing of embed_audio is tested."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.AdaptiveAvgPool2d((8, 16)), torch.nn.Flatten(), torch.nn.Linear(128, 512)
        )

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        assert spec.shape[1:] == (1, 128, 512)
        return self.net(spec)


@pytest.fixture(scope="module")
def tiny() -> TinyAudioEncoder:
    return TinyAudioEncoder()


class TestEmbedAudio:
    def test_real_encoder(self, encoder):
        out = embed_audio(encoder, torch.from_numpy(signal("chirp", SR)))
        assert out.shape == (512,) and out.dtype == torch.float32 and not out.requires_grad

    def test_file_and_waveform_agree(self, tmp_path, tiny, frontend):
        encoder = tiny
        y = signal("tones", 3 * SR)
        path = tmp_path / "a.wav"
        sf.write(str(path), y, SR, subtype="FLOAT")
        from_file = embed_audio(encoder, path)
        from_wave = embed_audio(encoder, torch.from_numpy(y))
        assert from_file.shape == (512,) and not from_file.requires_grad
        torch.testing.assert_close(from_file, from_wave)
        with torch.no_grad():
            direct = encoder(frontend(torch.from_numpy(y)))[0]
        torch.testing.assert_close(from_wave, direct)

    def test_resamples_other_rates(self, tiny):
        encoder = tiny
        y = signal("chirp", 2 * SR)
        at_44k = embed_audio(encoder, y)
        at_22k = embed_audio(encoder, y[::2].copy(), sample_rate=22050)
        assert torch.nn.functional.cosine_similarity(at_44k, at_22k, dim=0) > 0.9

    def test_windows_average(self, tiny):
        y = ramped("tones", NUM_FRAMES * 512 + 100_000)
        got = embed_audio(tiny, torch.from_numpy(y), crop="windows", batch_size=1)
        starts = window_starts(1 + y.shape[0] // 512)
        assert len(starts) == 2
        expected = mean_of_normalized(tiny, [window_reference(y, s) for s in starts])
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)

    def test_rejects_silence(self, tiny):
        encoder = tiny
        with pytest.raises(AudioError, match="audio is silent"):
            embed_audio(encoder, torch.zeros(SR))

    @pytest.mark.parametrize("crop", ["start", "center", "random", "windows"])
    def test_short_file_equals_the_waveform(self, tmp_path, tiny, crop):
        """Up to 864 frames a crop is the whole clip: file and waveform paths agree."""
        rng = np.random.default_rng(1)
        y = (0.3 * rng.standard_normal((5 * 48000, 2))).astype(np.float32)
        path = tmp_path / "a.flac"
        sf.write(str(path), y, 48000)
        kwargs = {"crop": crop, "generator": torch.Generator().manual_seed(0)}
        from_file = embed_audio(tiny, path, **kwargs)
        kwargs["generator"] = torch.Generator().manual_seed(0)
        from_wave = embed_audio(tiny, load_audio(path), **kwargs)
        torch.testing.assert_close(from_file, from_wave, atol=1e-5, rtol=0)

    @pytest.mark.parametrize("crop", ["start", "center", "random"])
    def test_long_file_crop_is_the_whole_file_s_frames(self, tmp_path, crop):
        """25 s at 22.05 kHz: the window read equals the whole file's frames, own reference."""
        path = tmp_path / "long.wav"
        sf.write(str(path), ramped("tones", 25 * 22050), 22050, subtype="FLOAT")
        encoder = RecordingEncoder()
        embed_audio(encoder, path, crop=crop, generator=torch.Generator().manual_seed(3))
        whole = load_audio(path).numpy()
        frames = 1 + whole.shape[0] // 512
        (start,) = crop_starts(frames, 1, crop, generator=torch.Generator().manual_seed(3))
        assert start < frames - NUM_FRAMES - 100  # not the loudest window: the reference matters
        (spec,) = encoder.inputs
        np.testing.assert_allclose(
            spec[0].numpy(), window_reference(whole, start), atol=PARITY_ATOL
        )

    def test_long_file_windows(self, tmp_path):
        path = tmp_path / "long.wav"
        sf.write(str(path), ramped("chirp", 25 * 48000, seed=4), 48000, subtype="FLOAT")
        encoder = RecordingEncoder()
        got = embed_audio(encoder, path, crop="windows", batch_size=2)
        whole = load_audio(path).numpy()
        starts = window_starts(1 + whole.shape[0] // 512)
        specs = torch.cat(encoder.inputs)
        assert [x.shape[0] for x in encoder.inputs] == [2, 1] and len(starts) == 3
        for spec, start in zip(specs, starts, strict=True):  # the last ends at the file's end
            np.testing.assert_allclose(
                spec.numpy(), window_reference(whole, start), atol=PARITY_ATOL
            )
        expected = mean_of_normalized(encoder, [window_reference(whole, s) for s in starts])
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)

    @pytest.mark.parametrize("crop", ["start", "center", "random"])
    def test_decodes_only_one_window_of_a_long_file(self, long_8k, tiny, monkeypatch, crop):
        reads = counting_reads(monkeypatch)
        out = embed_audio(tiny, long_8k, crop=crop, generator=torch.Generator().manual_seed(0))
        assert out.shape == (512,) and torch.isfinite(out).all()
        assert len(reads) == 1 and reads[0] <= WINDOW_FRAMES_8K  # of 14.4 million

    def test_windows_are_read_one_at_a_time(self, tmp_path, monkeypatch):
        path = tmp_path / "two_minutes.wav"
        write_long(path, seconds=120, rate=8000)
        events: list[tuple[str, int]] = []
        reads = counting_reads(monkeypatch, events)
        encoder = RecordingEncoder(events)
        embed_audio(encoder, path, crop="windows", batch_size=1)
        windows = len(window_starts(1 + 120 * SR // 512))
        assert len(reads) == windows == 12
        # read, embed, read, embed...: never more than one window's audio at a time
        assert events == [event for n in reads for event in (("read", n), ("encode", 1))]
        assert max(reads) <= WINDOW_FRAMES_8K

    def test_silent_window_is_an_error_naming_it(self, tmp_path, tiny):
        y = np.concatenate([np.zeros(11 * SR, np.float32), signal("tones", 14 * SR)])
        path = tmp_path / "late.wav"
        sf.write(str(path), y, SR)
        with pytest.raises(AudioError) as info:
            embed_audio(tiny, path, crop="start")
        assert "audio is silent from 0.00 s to 10.04 s" in str(info.value)
        assert 'crop = "center", "random" or "windows"' in info.value.hint
        assert torch.isfinite(embed_audio(tiny, path, crop="center")).all()

    def test_windows_leave_silent_windows_out(self, tiny):
        n = 3 * NUM_FRAMES * 512 - 1  # exactly three windows
        y = ramped("tones", n)
        lo, hi = frame_span(NUM_FRAMES, NUM_FRAMES, n)
        y[lo - 2000 : hi + 2000] = 0  # the middle window's samples, and a bit more
        got = embed_audio(tiny, torch.from_numpy(y), crop="windows")
        audible = [window_reference(y, 0), window_reference(y, 2 * NUM_FRAMES)]
        torch.testing.assert_close(got, mean_of_normalized(tiny, audible), atol=1e-4, rtol=0)

    def test_a_silent_file_in_windows(self, tmp_path, tiny):
        path = tmp_path / "silence.wav"
        sf.write(str(path), np.zeros(SR, np.float32), SR)
        with pytest.raises(AudioError, match="silent in all 1 of its 10 s windows"):
            embed_audio(tiny, path, crop="windows")

    def test_max_seconds_limits_windows_only(self, tmp_path, tiny):
        path = tmp_path / "thirty.wav"
        write_long(path, seconds=30, rate=8000)
        assert embed_audio(tiny, path, crop="center", max_seconds=20).shape == (512,)
        with pytest.raises(AudioError) as info:
            embed_audio(tiny, path, crop="windows", max_seconds=20)
        assert 'it is 30.0 s long, more than max_seconds=20 for crop = "windows"' in str(info.value)
        assert 'crop = "start", "center" or "random"' in info.value.hint
        assert "max_seconds" in info.value.hint


WINDOW_FRAMES_8K = math.ceil((863 * 512 + 2048) * 8000 / SR) + 400
"""Source frames of one 864-frame window at 8 kHz, plus the resampler's margin and period."""


def write_long(path: Path, seconds: int, rate: int) -> Path:
    """A long 16-bit mono WAV written a minute at a time: noise plus a slow chirp."""
    rng = np.random.default_rng(0)
    with sf.SoundFile(str(path), "w", rate, 1, "PCM_16") as fh:
        for begin in range(0, seconds, 60):
            t = np.arange(begin * rate, min(begin + 60, seconds) * rate) / rate
            y = 0.3 * np.sin(2 * np.pi * (200 + t) * t) + 0.05 * rng.standard_normal(t.size)
            fh.write(y.astype(np.float32))
    return path


@pytest.fixture(scope="module")
def long_8k(tmp_path_factory) -> Path:
    """30 minutes at 8 kHz (29 MB): far more than any window, cheap to write."""
    return write_long(tmp_path_factory.mktemp("long") / "half_hour.wav", seconds=1800, rate=8000)


def counting_reads(monkeypatch, events: list | None = None) -> list[int]:
    """Frames returned by every ``soundfile.SoundFile.read`` (the decoder's work)."""
    counts: list[int] = []
    real = sf.SoundFile.read

    def read(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        counts.append(len(out))
        if events is not None:
            events.append(("read", len(out)))
        return out

    monkeypatch.setattr(sf.SoundFile, "read", read)
    return counts


def mean_of_normalized(encoder: torch.nn.Module, specs: list[np.ndarray]) -> torch.Tensor:
    with torch.no_grad():
        out = encoder(torch.from_numpy(np.stack(specs)).float())
    return torch.nn.functional.normalize(out, dim=-1).mean(dim=0)


class RecordingEncoder(TinyAudioEncoder):
    """The tiny encoder, keeping every input it is given (and logging it to ``events``)."""

    def __init__(self, events: list | None = None) -> None:
        super().__init__()
        self.inputs: list[torch.Tensor] = []
        self.events = events

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        self.inputs.append(spec.detach().clone())
        if self.events is not None:
            self.events.append(("encode", spec.shape[0]))
        return super().forward(spec)


def reference_encoder(state: dict[str, torch.Tensor], spec: torch.Tensor) -> torch.Tensor:
    """The SoundCLIP encoder in eval mode written out with ``torch.nn.functional`` from its
    state dict (the released checkpoint's keys): an independent reference for the module."""
    F = torch.nn.functional

    def conv(x: torch.Tensor, name: str, stride: int = 1, padding: int = 0) -> torch.Tensor:
        return F.conv2d(x, state[f"{name}.weight"], state.get(f"{name}.bias"), stride, padding)

    def bn(x: torch.Tensor, name: str) -> torch.Tensor:
        mean, var = state[f"{name}.running_mean"], state[f"{name}.running_var"]
        return F.batch_norm(x, mean, var, state[f"{name}.weight"], state[f"{name}.bias"], eps=1e-5)

    r = "feature_extractor"
    x = conv(spec, "conv")  # 3x3, no padding: (B, 3, 126, 510)
    x = F.max_pool2d(F.relu(bn(conv(x, f"{r}.conv1", 2, 3), f"{r}.bn1")), 3, 2, 1)
    for layer in (1, 2, 3, 4):
        for block in (0, 1):
            name = f"{r}.layer{layer}.{block}"
            stride = 2 if layer > 1 and block == 0 else 1
            out = F.relu(bn(conv(x, f"{name}.conv1", stride, 1), f"{name}.bn1"))
            out = bn(conv(out, f"{name}.conv2", 1, 1), f"{name}.bn2")
            if f"{name}.downsample.0.weight" in state:
                x = bn(conv(x, f"{name}.downsample.0", stride), f"{name}.downsample.1")
            x = F.relu(out + x)
    return F.linear(x.mean(dim=(2, 3)), state[f"{r}.fc.weight"], state[f"{r}.fc.bias"])


@pytest.fixture(scope="module")
def trained_state(state) -> dict[str, torch.Tensor]:
    """Random weights with batch-norm statistics and biases that are not the identity."""
    g = torch.Generator().manual_seed(3)
    out = dict(state)
    for key, value in state.items():
        if key.endswith(("running_mean", "bias")):
            out[key] = 0.1 * torch.randn(value.shape, generator=g)
        elif key.endswith("running_var"):
            out[key] = 0.5 + torch.rand(value.shape, generator=g)
    return out


class TestTorchvisionFeatureExtractor:
    """``feature_extractor`` is torchvision's ResNet18 under the released checkpoint's keys."""

    def test_is_torchvisions_resnet18(self, encoder):
        import torchvision

        assert type(encoder.feature_extractor) is torchvision.models.ResNet
        assert encoder.feature_extractor.fc.out_features == 512
        reference = torchvision.models.resnet18(weights=None, num_classes=512)
        assert list(encoder.feature_extractor.state_dict()) == list(reference.state_dict())

    def test_outputs_and_gradients_equal_the_functional_reference(self, trained_state):
        model = load_soundclip(trained_state)
        spec = torch.rand(2, 1, 128, 512, generator=torch.Generator().manual_seed(1))
        spec.requires_grad_(True)
        out = model(spec)
        (grad,) = torch.autograd.grad(out.square().sum(), spec)
        spec2 = spec.detach().clone().requires_grad_(True)
        expected = reference_encoder(trained_state, spec2)
        (grad_expected,) = torch.autograd.grad(expected.square().sum(), spec2)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(grad, grad_expected, rtol=1e-4, atol=1e-6)
        assert grad.abs().sum() > 0

    def test_loading_draws_nothing_from_the_global_rng(self, state):
        before = torch.get_rng_state()
        load_soundclip(state)
        assert torch.equal(torch.get_rng_state(), before)

    def test_default_initialization_is_torchvisions(self):
        import torchvision

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(7)
            ours = SoundCLIPEncoder().state_dict()
            torch.manual_seed(7)
            torch.nn.Conv2d(1, 3, kernel_size=3)  # `conv` is built first
            reference = torchvision.models.resnet18(weights=None, num_classes=512).state_dict()
        assert all(torch.equal(ours[f"feature_extractor.{k}"], v) for k, v in reference.items())


class TestPad:
    """Where a clip shorter than the 864-frame canvas sits: end, center or random."""

    @pytest.mark.parametrize("frames", [1, 26, 431, 432, 862, 863])
    def test_offsets(self, frames):
        room = NUM_FRAMES - frames
        assert pad_offsets(frames, 3, "end") == [0, 0, 0]
        assert pad_offsets(frames, 2, "center") == [room // 2] * 2
        drawn = pad_offsets(frames, 200, "random", generator=torch.Generator().manual_seed(0))
        # the training loader's random.randint(0, 864 - w - 1): both ends included
        assert all(0 <= j <= room - 1 for j in drawn)
        if room > 1:
            assert len(set(drawn)) > 1

    @pytest.mark.parametrize("frames", [NUM_FRAMES, NUM_FRAMES + 1, 5000])
    def test_nothing_to_pad(self, frames):
        for pad in ("end", "center", "random"):
            assert pad_offsets(frames, 2, pad, generator=torch.Generator()) == [0, 0]

    def test_random_is_seeded_and_reaches_every_offset(self):
        def draw(seed: int) -> list[int]:
            return pad_offsets(861, 50, "random", generator=torch.Generator().manual_seed(seed))

        assert draw(7) == draw(7)
        assert draw(7) != draw(8)
        assert set(draw(7)) == {0, 1, 2}  # 864 - 861 - 1 = 2 is the largest

    def test_fit_frames_places_the_clip(self):
        spec = torch.arange(1.0, 11.0).reshape(1, 1, 10).expand(2, 3, 10)
        out = fit_frames(spec, offsets=[0, 427])
        assert out.shape == (2, 3, NUM_FRAMES)
        torch.testing.assert_close(out[0, :, :10], spec[0])
        torch.testing.assert_close(out[1, :, 427:437], spec[1])
        assert out[0, :, 10:].abs().sum() == 0 and out[1, :, :427].abs().sum() == 0
        assert out[1, :, 437:].abs().sum() == 0
        with pytest.raises(AudioError, match="pad offsets must lie in 0 .. 854"):
            fit_frames(spec, offsets=[0, 855])

    @pytest.mark.parametrize("n", [300, 30_000, 220_500, NUM_FRAMES * 512 - 600])
    def test_center_matches_reference_offset(self, frontend, n):
        y = signal("tones", n)
        frames = 1 + n // 512
        got = run(frontend, y, pad="center")
        expected = reference_frontend(y, offset=(NUM_FRAMES - frames) // 2)
        np.testing.assert_allclose(got, expected, atol=PARITY_ATOL, rtol=0)
        if 20 < frames < 800:  # a different input from the end-padded one, not a shifted copy
            assert np.abs(got - run(frontend, y)).max() > 0.5

    def test_random_matches_reference_offset(self, frontend):
        y = signal("noise", 100_000)
        (j,) = pad_offsets(
            1 + 100_000 // 512, 1, "random", generator=torch.Generator().manual_seed(4)
        )
        got = run(frontend, y, pad="random", generator=torch.Generator().manual_seed(4))
        np.testing.assert_allclose(got, reference_frontend(y, offset=j), atol=PARITY_ATOL)
        again = run(frontend, y, pad="random", generator=torch.Generator().manual_seed(4))
        np.testing.assert_array_equal(got, again)

    def test_module_default_and_windows(self):
        y = torch.from_numpy(signal("tones", 50_000))
        centred = SoundCLIPFrontend(pad="center")
        torch.testing.assert_close(centred(y), SoundCLIPFrontend()(y, pad="center"))
        torch.testing.assert_close(centred.windows(y)[:, 0], centred(y))

    def test_embed_audio_pads_a_file_the_same(self, tmp_path, tiny, frontend):
        y = signal("tones", 2 * SR)
        path = tmp_path / "short.wav"
        sf.write(str(path), y, SR, subtype="FLOAT")
        from_file = embed_audio(tiny, path, pad="center")
        with torch.no_grad():
            direct = tiny(frontend(torch.from_numpy(y), pad="center"))[0]
        torch.testing.assert_close(from_file, direct)
        assert not torch.allclose(from_file, embed_audio(tiny, path))

    def test_unknown_pad(self, frontend):
        with pytest.raises(AudioError, match="unknown pad policy 'middle'"):
            frontend(torch.ones(3000), pad="middle")
        with pytest.raises(AudioError, match="unknown pad policy 'start'"):
            SoundCLIPFrontend(pad="start")


class TestClipReference:
    """``db_reference="clip"``: the whole clip's loudest bin, then the crop (the original order)."""

    def test_long_clip_matches_the_original_order(self):
        y = ramped("tones", 3 * NUM_FRAMES * 512)  # the loudest bin at the end
        frames = 1 + len(y) // 512
        for crop, start in (("start", 0), ("center", (frames - NUM_FRAMES) // 2)):
            got = run(SoundCLIPFrontend(db_reference="clip"), y, crop=crop)
            np.testing.assert_allclose(got, reference_frontend(y, start=start), atol=PARITY_ATOL)
            window = run(SoundCLIPFrontend(), y, crop=crop)
            assert np.abs(got - window).max() > 0.02

    def test_short_clips_do_not_change(self, frontend):
        y = torch.from_numpy(signal("chirp", 200_000))
        torch.testing.assert_close(SoundCLIPFrontend(db_reference="clip")(y), frontend(y))

    def test_windows_share_the_clip_s_reference(self):
        n = 2 * NUM_FRAMES * 512
        y = ramped("tones", n)
        windows = SoundCLIPFrontend(db_reference="clip").windows(torch.from_numpy(y))
        for w, start in enumerate(window_starts(1 + n // 512)):
            expected = reference_frontend(y, start=start)
            np.testing.assert_allclose(windows[0, w].numpy(), expected, atol=PARITY_ATOL)

    def test_unknown_reference(self):
        with pytest.raises(AudioError, match="unknown dB reference 'file'"):
            SoundCLIPFrontend(db_reference="file")
