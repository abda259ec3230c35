from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from soundguide.core.errors import AudioError
from soundguide.encoders.audio import (
    AudioFile,
    InMemoryAudio,
    check_waveform,
    load_audio,
    peak_dbfs,
    prepare_waveform,
    read_window,
    resample,
)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Small ops on a shared 2-core machine run far faster without thread contention."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tone(seconds: float, rate: int, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_wav(path: Path, data: np.ndarray, rate: int = 44100, subtype: str = "PCM_16") -> Path:
    sf.write(str(path), data, rate, subtype=subtype)
    return path


def patch_wav_rate(path: Path, rate: int) -> Path:
    """Overwrite the sample-rate field of a canonical 44-byte-header WAV."""
    data = bytearray(path.read_bytes())
    assert data[12:16] == b"fmt "
    data[24:28] = struct.pack("<I", rate)
    path.write_bytes(bytes(data))
    return path


def load_error(path: Path, **kwargs) -> str:
    with pytest.raises(AudioError) as info:
        load_audio(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message, "errors must be one line"
    return message


class TestLoadAudio:
    def test_wav_mono_float32_at_target_rate(self, tmp_path):
        path = write_wav(tmp_path / "a.wav", tone(0.5, 44100))
        wave = load_audio(path)
        assert wave.dtype == torch.float32 and wave.shape == (22050,)
        np.testing.assert_allclose(wave.numpy(), tone(0.5, 44100), atol=1e-4)

    def test_stereo_is_channel_mean(self, tmp_path):
        left = tone(0.2, 44100, 440)
        right = tone(0.2, 44100, 1000, amp=0.3)
        path = write_wav(tmp_path / "s.wav", np.stack([left, right], axis=1), subtype="FLOAT")
        np.testing.assert_allclose(load_audio(path).numpy(), (left + right) / 2, atol=1e-6)

    def test_resamples_preserving_pitch(self, tmp_path):
        path = write_wav(tmp_path / "48k.wav", tone(1.0, 48000, 1000.0), 48000)
        wave = load_audio(path, 44100).numpy()
        assert wave.shape == (44100,)
        spectrum = np.abs(np.fft.rfft(wave))
        assert abs(np.argmax(spectrum) * 44100 / len(wave) - 1000.0) <= 1.0

    @pytest.mark.parametrize(
        ("fmt", "subtype"), [("FLAC", "PCM_16"), ("OGG", "VORBIS"), ("MP3", None)]
    )
    def test_compressed_formats(self, tmp_path, fmt, subtype):
        path = tmp_path / f"a.{fmt.lower()}"
        try:
            sf.write(str(path), tone(1.0, 44100), 44100, format=fmt, subtype=subtype)
        except (sf.LibsndfileError, TypeError, ValueError) as exc:
            pytest.skip(f"this libsndfile cannot write {fmt}: {exc}")
        wave = load_audio(path).numpy()
        assert abs(len(wave) - 44100) < 3000  # codecs may pad a frame or two
        assert (
            np.corrcoef(wave[5000:40000], tone(1.0, 44100)[5000:40000])[0, 1] > 0.9 or fmt == "MP3"
        )
        assert np.isfinite(wave).all() and np.abs(wave).max() > 0.1

    def test_window_decodes_only_what_is_asked(self, tmp_path):
        data = tone(3.0, 44100, 300.0) * np.linspace(0.2, 1.0, 3 * 44100, dtype=np.float32)
        path = write_wav(tmp_path / "long.wav", data, subtype="FLOAT")
        full = load_audio(path).numpy()
        part = load_audio(path, offset_seconds=1.0, duration_seconds=0.5).numpy()
        np.testing.assert_array_equal(part, full[44100 : 44100 + 22050])
        tail = load_audio(path, offset_seconds=2.5).numpy()
        np.testing.assert_array_equal(tail, full[2 * 44100 + 22050 :])

    def test_too_long_is_refused_before_decoding(self, tmp_path, monkeypatch):
        path = write_wav(tmp_path / "long.wav", tone(3.0, 44100))

        def no_read(*args, **kwargs):
            raise AssertionError("decoded a file that should have been refused")

        monkeypatch.setattr(sf.SoundFile, "read", no_read)
        with pytest.raises(AudioError) as info:
            load_audio(path, max_seconds=2.0)
        assert "3.0 s long" in str(info.value) and "max_seconds=2" in str(info.value)
        # the hint names load_audio's own options, or the caller's when it passes its own
        assert "offset_seconds/duration_seconds" in info.value.hint
        assert "max_seconds" in info.value.hint
        with pytest.raises(AudioError) as info:
            load_audio(path, max_seconds=2.0, too_long_hint="pass --skip-bad-audio")
        assert info.value.hint == "pass --skip-bad-audio"

    def test_window_of_a_long_file_is_allowed(self, tmp_path):
        path = write_wav(tmp_path / "long.wav", tone(3.0, 44100))
        assert load_audio(path, max_seconds=2.0, duration_seconds=1.0).shape == (44100,)
        assert "requested window" in load_error(path, max_seconds=2.0, offset_seconds=0.5)

    def test_offset_past_the_end(self, tmp_path):
        path = write_wav(tmp_path / "a.wav", tone(1.0, 44100))
        assert "past its end" in load_error(path, offset_seconds=5.0)

    def test_shorter_than_one_fft_window_loads(self, tmp_path):
        path = write_wav(tmp_path / "tiny.wav", tone(10 / 44100, 44100, 2000.0, amp=0.9))
        assert load_audio(path).shape == (10,)


def counting_reads(monkeypatch) -> list[int]:
    """Frames returned by every ``soundfile.SoundFile.read`` from now on (the decoder's work)."""
    counts: list[int] = []
    real = sf.SoundFile.read

    def read(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        counts.append(len(out))
        return out

    monkeypatch.setattr(sf.SoundFile, "read", read)
    return counts


def broadband(seconds: float, rate: int, channels: int, seed: int = 0) -> np.ndarray:
    """Noise plus a tone whose level changes: any phase or edge error shows."""
    n = int(round(seconds * rate))
    rng = np.random.default_rng(seed)
    t = np.arange(n) / rate
    ramp = np.linspace(0.2, 1.0, n)
    data = [
        ramp * (0.3 * np.sin(2 * np.pi * (300 + 200 * c) * t) + 0.2 * rng.standard_normal(n))
        for c in range(channels)
    ]
    return np.stack(data, axis=1).astype(np.float32)


class TestReadWindow:
    """A window read from a file equals the whole file decoded, resampled and sliced."""

    @pytest.mark.parametrize("fmt", ["WAV", "FLAC"])
    @pytest.mark.parametrize("channels", [1, 2])
    @pytest.mark.parametrize("rate", [44100, 48000, 22050, 16000])
    def test_equals_the_whole_file_sliced(self, tmp_path, fmt, channels, rate):
        path = tmp_path / f"a.{fmt.lower()}"
        sf.write(str(path), broadband(3.0, rate, channels), rate, format=fmt, subtype="PCM_16")
        whole = load_audio(path)
        total = whole.shape[0]
        block = 44100 // math.gcd(rate, 44100)  # output samples per resampling period
        windows = [
            (0, 30_000),  # the start: the resampler's zero padding
            (block * 100, block * 300),  # whole periods: the filter's margins matter
            (total // 2 - 12_345, total // 2 + 23_457),  # the middle, off the period grid
            (total - 40_000, total),  # the end
            (total - 1_000, total + 5_000),  # past the end: cut there
        ]
        with AudioFile(path) as audio:
            assert audio.num_samples == total and audio.seconds == pytest.approx(3.0)
            assert (audio.file_rate, audio.channels) == (rate, channels)
            for start, stop in windows:
                got = audio.read(start, stop)
                expected = whole[start:stop]
                assert got.shape == expected.shape, (start, stop)
                torch.testing.assert_close(got, expected, atol=2e-6, rtol=0)

    def test_read_window_reports_the_header_length(self, tmp_path):
        path = write_wav(tmp_path / "a.wav", broadband(2.0, 48000, 1), 48000)
        window = read_window(path, 1000, 5000)
        assert window.wave.shape == (4000,) and window.num_samples == 88200
        assert window.seconds == pytest.approx(2.0)

    @pytest.mark.parametrize("rate", [44100, 48000])
    def test_decodes_only_the_window(self, tmp_path, monkeypatch, rate):
        path = write_wav(tmp_path / "long.wav", broadband(60.0, rate, 1), rate)
        counts = counting_reads(monkeypatch)
        with AudioFile(path) as audio:
            wave = audio.read(30 * 44100, 31 * 44100)
        assert wave.shape == (44100,)
        # one second at the file's rate, plus the filter margin and one period
        assert len(counts) == 1 and rate <= counts[0] <= rate + 500

    def test_mp3_decoder_preroll(self, tmp_path):
        """libmpg123 gets the first frames after a seek wrong; the pre-roll hides it."""
        path = tmp_path / "a.mp3"
        n = np.arange(4 * 44100)
        data = (0.5 * np.sin(n / 10) * (0.6 + 0.4 * np.sin(n / 30_000))).astype(np.float32)
        try:
            sf.write(str(path), data, 44100, format="MP3")
        except (sf.LibsndfileError, TypeError, ValueError) as exc:
            pytest.skip(f"this libsndfile cannot write MP3: {exc}")
        with sf.SoundFile(str(path)) as fh:
            whole = torch.from_numpy(fh.read(dtype="float32"))
        with AudioFile(path) as audio:
            for start in (30_001, 70_000, 110_500):
                got = audio.read(start, start + 20_000)
                torch.testing.assert_close(got, whole[start : start + 20_000], atol=1e-5, rtol=0)

    def test_silent_window_names_its_time_range(self, tmp_path):
        data = np.concatenate([tone(2.0, 44100), np.zeros(2 * 44100, np.float32)])
        path = write_wav(tmp_path / "half.wav", data)
        with AudioFile(path) as audio:
            with pytest.raises(AudioError) as info:
                audio.read(3 * 44100, 4 * 44100, silence_hint="try the start")
            message = str(info.value)
            assert "audio is silent from 3.00 s to 4.00 s (all samples are zero" in message
            assert info.value.hint == "try the start"
            assert audio.read(3 * 44100, 4 * 44100, allow_silence=True).abs().max() == 0
            assert audio.read(0, 44100).abs().max() > 0.4

    def test_silence_is_judged_on_the_window_not_the_filter_margin(self, tmp_path):
        """At 48 kHz the read reaches past the window: sound there does not count."""
        data = np.concatenate([np.zeros(48000, np.float32), tone(1.0, 48000)])
        path = write_wav(tmp_path / "late.wav", data, 48000)
        with AudioFile(path) as audio, pytest.raises(AudioError, match="silent from 0.00 s"):
            audio.read(0, 44100 - 10)

    def test_non_finite_samples_in_the_window(self, tmp_path):
        data = tone(3.0, 44100)
        data[int(1.5 * 44100)] = np.nan
        path = write_wav(tmp_path / "nan.wav", data, subtype="FLOAT")
        with AudioFile(path) as audio:
            with pytest.raises(AudioError, match="1 non-finite samples .* from 1.00 s to 2.00 s"):
                audio.read(44100, 2 * 44100)
            assert torch.isfinite(audio.read(0, 44100)).all()  # the rest is usable

    def test_bad_windows(self, tmp_path):
        path = write_wav(tmp_path / "a.wav", tone(1.0, 44100))
        with AudioFile(path) as audio:
            with pytest.raises(AudioError, match="past its end"):
                audio.read(44100, 50_000)
            with pytest.raises(AudioError, match="0 <= start < stop"):
                audio.read(100, 100)

    def test_header_checks(self, tmp_path):
        from PIL import Image

        picture = tmp_path / "picture.wav"
        Image.new("RGB", (4, 4), "red").save(picture, format="PNG")
        with pytest.raises(AudioError, match="it looks like a PNG image"):
            AudioFile(picture)
        corrupt = patch_wav_rate(write_wav(tmp_path / "r.wav", tone(0.1, 44100)), 2_000_000)
        with pytest.raises(AudioError, match="absurd sample rate 2000000 Hz"):
            AudioFile(corrupt)
        with pytest.raises(AudioError, match="0 frames"):
            AudioFile(write_wav(tmp_path / "zero.wav", np.zeros((0,), dtype=np.float32)))

    def test_a_short_decode_is_an_error(self, tmp_path, monkeypatch):
        path = write_wav(tmp_path / "a.wav", tone(2.0, 44100))
        real = sf.SoundFile.read
        monkeypatch.setattr(sf.SoundFile, "read", lambda self, n, **kw: real(self, n, **kw)[:-10])
        with AudioFile(path) as audio, pytest.raises(AudioError, match="decoding stopped at"):
            audio.read(0, 44100)

    def test_in_memory_audio_reads_the_same_way(self):
        wave = torch.from_numpy(np.concatenate([tone(1.0, 44100), np.zeros(44100, np.float32)]))
        audio = InMemoryAudio(wave, 44100, name="audio waveform")
        assert audio.num_samples == 88200 and audio.seconds == 2.0
        assert torch.equal(audio.read(100, 200), wave[100:200])
        with pytest.raises(AudioError, match="audio waveform: audio is silent from 1.50 s"):
            audio.read(66150, 88200)


class TestBadFiles:
    def test_missing(self, tmp_path):
        assert "no such file" in load_error(tmp_path / "nope.wav")

    def test_directory(self, tmp_path):
        assert "directory" in load_error(tmp_path)

    def test_empty_file(self, tmp_path):
        path = tmp_path / "empty.wav"
        path.write_bytes(b"")
        assert "empty (0 bytes)" in load_error(path)

    def test_zero_frames(self, tmp_path):
        path = write_wav(tmp_path / "zero.wav", np.zeros((0,), dtype=np.float32))
        assert "0 frames" in load_error(path)

    def test_random_bytes(self, tmp_path):
        path = tmp_path / "noise.wav"
        path.write_bytes(np.random.default_rng(0).bytes(4096))
        message = load_error(path)
        assert message.startswith(f"cannot read audio {path}: not an audio file")

    def test_png_renamed_wav(self, tmp_path):
        from PIL import Image

        path = tmp_path / "picture.wav"
        Image.new("RGB", (4, 4), "red").save(path, format="PNG")
        assert "not an audio file (it looks like a PNG image)" in load_error(path)

    @pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
    def test_non_finite_samples(self, tmp_path, value):
        data = tone(0.1, 44100)
        data[100] = value
        path = write_wav(tmp_path / "nan.wav", data, subtype="FLOAT")
        assert "non-finite" in load_error(path)

    def test_digital_silence(self, tmp_path):
        path = write_wav(tmp_path / "silence.wav", np.zeros(44100, dtype=np.float32))
        message = load_error(path)
        assert "audio is silent" in message and "all samples are zero" in message

    def test_below_minus_80_dbfs_is_silent(self, tmp_path):
        data = (3e-5 * np.random.default_rng(0).standard_normal(44100)).clip(-9e-5, 9e-5)
        path = write_wav(tmp_path / "hiss.wav", data.astype(np.float32), subtype="FLOAT")
        assert "audio is silent (peak -8" in load_error(path)

    def test_quiet_but_audible_loads(self, tmp_path):
        path = write_wav(
            tmp_path / "quiet.wav", tone(0.1, 44100, amp=10 ** (-70 / 20)), subtype="FLOAT"
        )
        assert load_audio(path).abs().max() > 1e-4

    def test_polarity_inverted_stereo_cancels(self, tmp_path):
        data = tone(0.5, 44100)
        path = write_wav(tmp_path / "inverted.wav", np.stack([data, -data], axis=1))
        message = load_error(path)
        assert "audio is silent" in message and "channels cancel" in message

    @pytest.mark.parametrize("rate", [0, 1, 2_000_000, 50_000_000])
    def test_absurd_header_sample_rate(self, tmp_path, rate):
        path = patch_wav_rate(write_wav(tmp_path / "rate.wav", tone(0.1, 44100)), rate)
        message = load_error(path)
        assert f"absurd sample rate {rate} Hz" in message

    def test_truncated_file_reads_what_is_there(self, tmp_path):
        path = write_wav(tmp_path / "cut.wav", tone(1.0, 44100))
        path.write_bytes(path.read_bytes()[:10_044])
        wave = load_audio(path)
        assert 0 < wave.shape[0] <= 5000

    def test_bad_arguments(self, tmp_path):
        path = write_wav(tmp_path / "a.wav", tone(0.1, 44100))
        assert "offset_seconds" in load_error(path, offset_seconds=-1.0)
        assert "duration_seconds" in load_error(path, duration_seconds=0.0)
        assert "absurd sample rate 0 Hz" in load_error(path, sample_rate=0)


class TestWaveforms:
    def test_shapes_and_dtypes(self):
        mono = tone(0.1, 16000)
        assert check_waveform(mono, 16000).shape == (1, 1600)
        stereo = np.stack([mono, mono]).astype(np.float64)
        checked = check_waveform(torch.from_numpy(stereo), 16000)
        assert checked.shape == (2, 1600) and checked.dtype == torch.float32

    @pytest.mark.parametrize(
        ("wave", "match"),
        [
            (np.zeros((2, 3, 100), np.float32), r"shape \(T,\) or \(C, T\)"),
            (np.ones((1000, 2), np.int16), "floating-point"),
            (np.zeros((0,), np.float32), "empty"),
            (np.full((4410, 2), 0.5, np.float32), "pass wave.T"),
            (np.array([0.1, np.nan, 0.2] * 100, np.float32), "non-finite"),
            (np.zeros(1000, np.float32), "audio is silent"),
            ("not audio", "torch.Tensor or numpy array"),
        ],
    )
    def test_rejected(self, wave, match):
        with pytest.raises(AudioError, match=match):
            check_waveform(wave, 44100)

    def test_inverted_channels(self):
        wave = torch.from_numpy(tone(0.1, 44100))
        with pytest.raises(AudioError, match="channels cancel"):
            check_waveform(torch.stack([wave, -wave]), 44100)

    @pytest.mark.parametrize("rate", [0, 1, 5_000_000, 44100.5, float("nan")])
    def test_absurd_rate(self, rate):
        with pytest.raises(AudioError, match="sample rate"):
            check_waveform(tone(0.1, 44100), rate)

    def test_prepare_mixes_and_resamples(self):
        left = torch.from_numpy(tone(0.5, 22050, 500.0))
        out = prepare_waveform(torch.stack([left, left * 0.5]), 22050, 44100)
        assert out.shape == (22050,)
        expected = resample(left * 0.75, 22050, 44100)
        torch.testing.assert_close(out, expected)

    def test_resample_same_rate_is_identity(self):
        wave = torch.randn(100)
        assert resample(wave, 44100, 44100) is wave

    def test_peak_dbfs(self):
        assert peak_dbfs(torch.zeros(3)) == -math.inf
        assert peak_dbfs(torch.tensor([0.0, -0.1])) == pytest.approx(-20.0)
