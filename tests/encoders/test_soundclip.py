from __future__ import annotations

import json
from pathlib import Path

import cv2
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
    load_soundclip,
    reflect_pad,
    spectrogram_to_input,
    window_starts,
)
from tests.encoders.reference_frontend import reference_frontend, reference_spectrogram

SR = 44100
MANIFEST = Path(__file__).resolve().parents[1] / "data" / "soundclip_resnet18.keys.json"
SHARED_AUDIO = Path(__file__).resolve().parents[2].parent / "shared" / "audio"
PARITY_ATOL = 1e-3


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Small ops on a shared 2-core machine run far faster without thread contention."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
    torch.manual_seed(0)
    return SoundCLIPEncoder().eval()


def run(frontend: SoundCLIPFrontend, y: np.ndarray, **kwargs) -> np.ndarray:
    return frontend(torch.from_numpy(y)[None], **kwargs)[0].numpy()


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
        np.testing.assert_allclose(got, reference_frontend(y), atol=PARITY_ATOL, rtol=0)

    def test_full_spectrogram_matches_librosa(self, frontend):
        y = signal("chirp", 200_000)
        got = frontend.spectrogram(torch.from_numpy(y))[0].numpy()
        ref = reference_spectrogram(y)
        assert got.shape == ref.shape == (128, 1 + 200_000 // 512)
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)

    @pytest.mark.parametrize("crop", ["center", "random"])
    def test_crops_match_reference_offset(self, frontend, crop):
        y = signal("tones", 600_000)
        frames = 1 + 600_000 // 512
        generator = torch.Generator().manual_seed(3)
        (start,) = crop_starts(frames, 1, crop, generator=torch.Generator().manual_seed(3))
        assert 0 < start <= frames - NUM_FRAMES
        got = run(frontend, y, crop=crop, generator=generator)
        np.testing.assert_allclose(got, reference_frontend(y, start=start), atol=PARITY_ATOL)

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
        y = torch.from_numpy(signal("tones", n))
        windows = frontend.windows(y)
        frames = 1 + n // 512
        assert windows.shape == (1, 3, 1, 128, 512)
        for w, start in enumerate(window_starts(frames)):
            expected = reference_frontend(y.numpy(), start=start)
            np.testing.assert_allclose(windows[0, w].numpy(), expected, atol=PARITY_ATOL)
        assert frontend.windows(y, hop_frames=432).shape[1] == len(window_starts(frames, 432))
        assert frontend.windows(y[:1000]).shape == (1, 1, 1, 128, 512)

    @pytest.mark.parametrize(
        "bad", [torch.ones(2, 3, 4), torch.ones(0), torch.ones(10, dtype=torch.int64)]
    )
    def test_bad_input(self, frontend, bad):
        with pytest.raises(AudioError, match="waveform"):
            frontend(bad)


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

    def test_windows_average(self, tiny, frontend):
        encoder = tiny
        y = torch.from_numpy(signal("tones", NUM_FRAMES * 512 + 100_000))
        got = embed_audio(encoder, y, crop="windows", batch_size=1)
        with torch.no_grad():
            each = encoder(frontend.windows(y)[0])
        assert each.shape[0] == 2
        torch.testing.assert_close(got, torch.nn.functional.normalize(each, dim=-1).mean(0))

    def test_rejects_silence(self, tiny):
        encoder = tiny
        with pytest.raises(AudioError, match="audio is silent"):
            embed_audio(encoder, torch.zeros(SR))


@pytest.fixture(scope="module")
def resnet_pair():
    """torchvision's ResNet18 and ours with its weights (non-trivial batch-norm statistics)."""
    import torchvision

    from soundguide.encoders.soundclip import ResNet18

    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None, num_classes=512)
    with torch.no_grad():  # batch-norm statistics that are not the identity
        for m in reference.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    ours = ResNet18(num_classes=512)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference, ours


class TestResNet18:
    """The feature extractor is written here; torchvision is the reference."""

    def test_keys_and_shapes_are_torchvisions(self, resnet_pair):
        reference, ours = resnet_pair
        assert [(k, v.shape) for k, v in ours.state_dict().items()] == [
            (k, v.shape) for k, v in reference.state_dict().items()
        ]

    def test_eval_outputs_and_gradients_equal(self, resnet_pair):
        reference, ours = resnet_pair
        reference.eval(), ours.eval()
        x = torch.randn(2, 3, 126, 510, generator=torch.Generator().manual_seed(1))
        x.requires_grad_(True)
        out = ours(x)
        (grad,) = torch.autograd.grad(out.square().sum(), x)
        x2 = x.detach().clone().requires_grad_(True)
        expected = reference(x2)
        expected.square().sum().backward()
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(grad, x2.grad)
        assert grad.abs().sum() > 0

    def test_train_mode_updates_the_same_statistics(self, resnet_pair):
        import copy

        reference, ours = (copy.deepcopy(m).train() for m in resnet_pair)
        x = torch.randn(2, 3, 126, 510, generator=torch.Generator().manual_seed(2))
        torch.testing.assert_close(ours(x), reference(x), rtol=0, atol=1e-5)
        for (key, a), b in zip(
            ours.state_dict().items(), reference.state_dict().values(), strict=True
        ):
            torch.testing.assert_close(a, b, msg=key)

    def test_default_initialization_follows_torchvision(self):
        import torchvision

        from soundguide.encoders.soundclip import ResNet18

        torch.manual_seed(7)  # same modules in the same order: the same random draws
        reference = torchvision.models.resnet18(weights=None, num_classes=512).state_dict()
        torch.manual_seed(7)
        ours = ResNet18(num_classes=512).state_dict()
        assert all(torch.equal(ours[k], v) for k, v in reference.items())
        assert torch.equal(ours["bn1.weight"], torch.ones(64))
        std = ours["layer1.0.conv1.weight"].std().item()  # kaiming normal, fan_out, relu
        assert abs(std - (2 / (64 * 9)) ** 0.5) < 0.01

    def test_encoder_never_imports_torchvision(self):
        from tests.isolation import imported_by

        code = (
            "import torch\n"
            "torch.set_num_threads(1)\n"
            "from soundguide.encoders.soundclip import SoundCLIPEncoder\n"
            "SoundCLIPEncoder()(torch.zeros(1, 1, 128, 512))\n"
        )
        assert imported_by(code, ["torchvision"]) == []
