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
    _RESAMPLE_KWARGS,
    CONVERT_HINT,
    AudioFile,
    InMemoryAudio,
    check_waveform,
    load_audio,
    peak_dbfs,
    prepare_waveform,
    read_window,
    resample,
    resample_margin,
)


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


def load_failure(path: Path, **kwargs) -> AudioError:
    with pytest.raises(AudioError) as info:
        load_audio(path, **kwargs)
    assert "\n" not in str(info.value), "errors must be one line"
    return info.value


def load_error(path: Path, **kwargs) -> str:
    return str(load_failure(path, **kwargs))


def riff_chunk(chunk_id: bytes, payload: bytes, endian: str = "<") -> bytes:
    """One RIFF chunk, with the pad byte that follows an odd-sized payload."""
    return chunk_id + struct.pack(endian + "I", len(payload)) + payload + b"\0" * (len(payload) % 2)


def fmt_chunk(rate: int, endian: str = "<") -> bytes:
    """The ``fmt `` chunk of 16-bit PCM mono at ``rate``."""
    payload = struct.pack(endian + "HHIIHH", 1, 1, rate, (2 * rate) % 2**32, 2, 16)
    return riff_chunk(b"fmt ", payload, endian)


def wav_header(*chunks: bytes, magic: bytes = b"RIFF", form: bytes = b"WAVE") -> bytes:
    """A RIFF (or big-endian RIFX) file of ``chunks``: no ``data`` chunk unless given."""
    body = form + b"".join(chunks)
    return magic + struct.pack(">I" if magic == b"RIFX" else "<I", len(body)) + body


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
        assert info.value.hint == (
            "load_audio decodes whole clips: pass offset_seconds/duration_seconds "
            "to read a window, or raise max_seconds"
        )
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

    def test_a_one_sample_file_loads(self, tmp_path):
        path = write_wav(tmp_path / "one.wav", np.array([0.5], np.float32), subtype="FLOAT")
        assert load_audio(path).tolist() == [0.5]

    @pytest.mark.parametrize("max_seconds", [0.0, -1.0, math.nan])
    def test_max_seconds_must_be_positive(self, tmp_path, max_seconds):
        path = write_wav(tmp_path / "a.wav", tone(0.1, 44100))
        assert load_error(path, max_seconds=max_seconds) == (
            f"max_seconds must be > 0, got {max_seconds}"
        )
        assert load_audio(path, max_seconds=0.5).shape == (4410,)

    def test_a_clip_of_exactly_max_seconds_loads(self, tmp_path):
        exact = write_wav(tmp_path / "exact.wav", tone(1.0, 44100))
        assert load_audio(exact, max_seconds=1.0).shape == (44100,)
        over = write_wav(tmp_path / "over.wav", tone(44101 / 44100, 44100))
        assert load_error(over, max_seconds=1.0) == (
            f"cannot use audio {over}: it is 1.0 s long, more than max_seconds=1"
        )

    def test_default_max_seconds_is_ten_minutes(self, tmp_path):
        path = write_wav(tmp_path / "long.wav", tone(600.001, 1000, 100.0), 1000)
        assert "600.0 s long, more than max_seconds=600" in load_error(path, sample_rate=1000)

    def test_too_long_error_names_the_window_it_measured(self, tmp_path):
        path = write_wav(tmp_path / "long.wav", tone(3.0, 44100))
        assert ": it is 3.0 s long" in load_error(path, max_seconds=2.0)
        assert ": the requested window is 2.5 s long" in load_error(
            path, max_seconds=2.0, duration_seconds=2.5
        )

    def test_max_seconds_counts_from_the_offset(self, tmp_path):
        path = write_wav(tmp_path / "long.wav", tone(3.0, 44100))
        assert load_audio(path, max_seconds=1.0, offset_seconds=2.5).shape == (22050,)

    def test_offset_at_the_last_sample_and_at_the_end(self, tmp_path):
        path = write_wav(tmp_path / "a.wav", tone(1.0, 44100, amp=0.9) + 0.05)
        assert load_audio(path, offset_seconds=44099 / 44100).shape == (1,)
        assert load_error(path, offset_seconds=1.0) == (
            f"cannot use audio {path}: offset_seconds=1 is past its end (1.00 s)"
        )

    def test_a_tiny_duration_reads_one_sample(self, tmp_path):
        path = write_wav(tmp_path / "a.wav", tone(0.1, 44100) + 0.5)
        assert load_audio(path, duration_seconds=1e-9).shape == (1,)

    def test_a_decoder_that_returns_nothing(self, tmp_path, monkeypatch):
        path = write_wav(tmp_path / "a.wav", tone(0.1, 44100))
        real = sf.SoundFile.read
        monkeypatch.setattr(sf.SoundFile, "read", lambda self, n, **kw: real(self, n, **kw)[:0])
        assert load_error(path) == f"cannot read audio {path}: no audio frames could be decoded"


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
            assert message.startswith(f"cannot use audio {path}: audio is silent from 3.00 s")
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
            with pytest.raises(AudioError) as info:
                audio.read(44100, 2 * 44100)
            assert str(info.value) == (
                f"cannot use audio {path}: it contains 1 non-finite samples (NaN or inf) "
                "from 1.00 s to 2.00 s"
            )
            assert torch.isfinite(audio.read(0, 44100)).all()  # the rest is usable

    def test_bad_windows(self, tmp_path):
        path = write_wav(tmp_path / "a.wav", tone(1.0, 44100))
        with AudioFile(path) as audio:
            with pytest.raises(AudioError) as info:
                audio.read(44100, 50_000)
            assert str(info.value) == (
                f"cannot read a window of {path}: it starts at 1.00 s, past its end (1.00 s)"
            )
            assert audio.read(44099, 50_000).shape == (1,)
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
        with AudioFile(path) as audio, pytest.raises(AudioError) as info:
            audio.read(0, 44100)
        assert str(info.value) == (
            f"cannot read audio {path}: decoding stopped at 1.00 s, before the 2.00 s its "
            "header gives (a truncated or corrupt file)"
        )
        assert info.value.hint == "re-encode the file (e.g. ffmpeg -i in.mp3 out.wav)"

    def test_at_the_files_rate_exactly_the_window_is_decoded(self, tmp_path, monkeypatch):
        """No resampling margin, and no decoder pre-roll: that is for MP3 only."""
        path = write_wav(tmp_path / "a.wav", broadband(1.0, 44100, 1))
        counts = counting_reads(monkeypatch)
        with AudioFile(path) as audio:
            assert audio.read(1000, 5000).shape == (4000,)
        assert counts == [4000]

    def test_read_window_at_another_rate(self, tmp_path):
        path = write_wav(tmp_path / "a.wav", broadband(1.0, 44100, 1))
        window = read_window(path, 0, 100, sample_rate=22050)
        assert window.wave.shape == (100,) and window.num_samples == 22050

    def test_the_last_sample_survives_the_resamplers_float_rounding(self, tmp_path):
        """torchaudio computes its output length in float32, which cuts some lengths short."""
        path = tmp_path / "a.wav"
        sf.write(str(path), broadband(47561 / 16000, 16000, 1), 16000, subtype="FLOAT")
        with AudioFile(path) as audio:
            assert audio.num_samples == 131091  # ceil(47561 * 44100 / 16000)
            wave = audio.read(0, audio.num_samples)
        assert wave.shape == (131091,) and wave[-1].abs() > 0

    def test_a_window_whose_only_sound_is_its_first_sample(self, tmp_path):
        data = np.zeros(44100, np.float32)
        data[1000] = 0.5
        path = write_wav(tmp_path / "click.wav", data, subtype="FLOAT")
        with AudioFile(path) as audio:
            assert audio.read(1000, 1100)[0] == 0.5
            with pytest.raises(AudioError, match="silent from 0.02 s"):
                audio.read(1001, 1100)

    def test_silence_is_judged_without_the_margin_after_the_window(self, tmp_path):
        """At 22.05 kHz, output samples [2k, 2m) come from source samples [k, m)."""
        rate, quiet, loud = 22050, np.zeros(22050, np.float32), np.full(22050, 0.5, np.float32)
        path = write_wav(tmp_path / "steps.wav", np.concatenate([loud, quiet, loud]), rate)
        with AudioFile(path) as audio:
            assert audio.read(44098, 44100).abs().max() > 0.1  # the sound ends at 1.00 s
            # a window in the middle, whose read starts (and margin ends) in the sound
            with pytest.raises(AudioError, match="silent from 1.00 s to 2.00 s"):
                audio.read(44100, 88200)
            # the smallest window: one output sample, from source sample 44099 alone
            with pytest.raises(AudioError, match="silent from 2.00 s to 2.00 s"):
                audio.read(88198, 88199)
            assert audio.read(88198, 88199, allow_silence=True).abs().max() < 0.3

    @pytest.mark.parametrize(
        ("orig", "new"), [(48000, 44100), (22050, 44100), (16000, 44100), (44100, 48000)]
    )
    def test_resample_margin_is_torchaudios_filter_half_width(self, orig, new):
        """The margin read around a window must cover the whole resampling filter."""
        from torchaudio.functional.functional import _get_sinc_resample_kernel

        gcd = math.gcd(orig, new)
        _, width = _get_sinc_resample_kernel(orig, new, gcd, **_RESAMPLE_KWARGS)
        assert resample_margin(orig, new) == width
        assert resample_margin(orig, orig) == 0

    def test_in_memory_audio_reads_the_same_way(self):
        wave = torch.from_numpy(np.concatenate([tone(1.0, 44100), np.zeros(44100, np.float32)]))
        audio = InMemoryAudio(wave, 44100, name="audio waveform")
        assert audio.num_samples == 88200 and audio.seconds == 2.0
        assert torch.equal(audio.read(100, 200), wave[100:200])
        with pytest.raises(AudioError) as info:
            audio.read(66150, 88200, silence_hint="try the start")
        assert str(info.value).startswith(
            "cannot use audio waveform: audio is silent from 1.50 s to 2.00 s (all samples"
        )
        assert info.value.hint == "try the start"
        with pytest.raises(AudioError) as info:
            audio.read(88200, 90000)
        assert str(info.value) == (
            "cannot read a window of audio waveform: it starts at 2.00 s, past its end (2.00 s)"
        )

    def test_in_memory_audio_non_finite_window(self):
        wave = torch.from_numpy(tone(2.0, 44100))
        wave[66150] = math.inf
        audio = InMemoryAudio(wave, 44100, name="clip")
        with pytest.raises(AudioError) as info:
            audio.read(44100, 88200)
        assert str(info.value) == (
            "cannot use clip: it contains 1 non-finite samples (NaN or inf) from 1.00 s to 2.00 s"
        )
        assert torch.isfinite(audio.read(0, 44100)).all()

    @pytest.mark.parametrize("wave", [torch.ones(2, 100), torch.ones(0), torch.tensor(0.5)])
    def test_in_memory_audio_takes_a_non_empty_1d_waveform(self, wave):
        with pytest.raises(AudioError) as info:
            InMemoryAudio(wave, 44100, name="clip")
        assert str(info.value) == "cannot use clip: expected a non-empty (T,) waveform"

    def test_in_memory_audio_of_one_sample(self):
        assert InMemoryAudio(torch.tensor([0.5]), 44100).read(0, 1).tolist() == [0.5]


class TestBadFiles:
    def test_missing(self, tmp_path):
        error = load_failure(tmp_path / "nope.wav")
        assert "no such file" in str(error)
        assert error.hint == "relative paths resolve against the config's folder"

    def test_directory(self, tmp_path):
        assert "directory" in load_error(tmp_path)

    def test_empty_file(self, tmp_path):
        path = tmp_path / "empty.wav"
        path.write_bytes(b"")
        error = load_failure(path)
        assert "empty (0 bytes)" in str(error)
        assert error.hint == "an interrupted download or copy? copy the file again"

    def test_zero_frames(self, tmp_path):
        path = write_wav(tmp_path / "zero.wav", np.zeros((0,), dtype=np.float32))
        assert load_error(path) == f"cannot use audio {path}: the header says it holds 0 frames"

    def test_random_bytes(self, tmp_path):
        path = tmp_path / "noise.wav"
        path.write_bytes(np.random.default_rng(0).bytes(4096))
        message = load_error(path)
        assert message.startswith(f"cannot read audio {path}: not an audio file")

    def test_png_renamed_wav(self, tmp_path):
        from PIL import Image

        path = tmp_path / "picture.wav"
        Image.new("RGB", (4, 4), "red").save(path, format="PNG")
        error = load_failure(path)
        assert "not an audio file (it looks like a PNG image)" in str(error)
        assert error.hint == CONVERT_HINT

    @pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
    def test_non_finite_samples(self, tmp_path, value):
        data = tone(0.1, 44100)
        data[100] = value
        path = write_wav(tmp_path / "nan.wav", data, subtype="FLOAT")
        assert load_error(path) == (
            f"cannot use audio {path}: it contains 1 non-finite samples (NaN or inf)"
        )

    def test_digital_silence(self, tmp_path):
        path = write_wav(tmp_path / "silence.wav", np.zeros(44100, dtype=np.float32))
        with pytest.raises(AudioError) as info:
            load_audio(path)
        assert str(info.value) == (
            f"cannot use audio {path}: audio is silent (all samples are zero; "
            "the threshold is -80 dBFS)"
        )
        assert info.value.hint == "the audio encoder needs audible sound"

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
        with pytest.raises(AudioError) as info:
            load_audio(path)
        assert str(info.value) == (
            f"cannot use audio {path}: audio is silent after mixing its 2 channels to mono: "
            "the channels cancel each other (polarity-inverted stereo?)"
        )
        assert info.value.hint == "use a single channel (e.g. pass wave[0])"

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
        assert load_error(path, sample_rate=0) == (
            "cannot resample audio: absurd sample rate 0 Hz (expected 1000 to 1000000 Hz)"
        )

    @pytest.mark.parametrize(
        ("rate", "usable"), [(999, False), (1000, True), (1_000_000, True), (1_000_001, False)]
    )
    def test_header_sample_rate_limits_are_inclusive(self, tmp_path, rate, usable):
        path = tmp_path / "rate.wav"
        sf.write(str(path), tone(0.01, 44100), rate, subtype="PCM_16")
        if usable:
            with AudioFile(path) as audio:
                assert audio.file_rate == rate
        else:
            assert load_error(path) == (
                f"cannot use audio {path}: absurd sample rate {rate} Hz in the header "
                "(expected 1000 to 1000000 Hz); the file is corrupt"
            )

    @pytest.mark.parametrize(
        ("data", "expected"),
        [
            pytest.param(wav_header(fmt_chunk(999)), 999, id="rate-999"),
            pytest.param(wav_header(fmt_chunk(1000)), None, id="rate-1000"),
            pytest.param(wav_header(fmt_chunk(1_000_000)), None, id="rate-1000000"),
            pytest.param(wav_header(fmt_chunk(1_000_001)), 1_000_001, id="rate-1000001"),
            pytest.param(wav_header(fmt_chunk(2**32 - 1)), 2**32 - 1, id="rate-unsigned"),
            pytest.param(wav_header(fmt_chunk(999, ">"), magic=b"RIFX"), 999, id="rifx-999"),
            pytest.param(wav_header(fmt_chunk(1000, ">"), magic=b"RIFX"), None, id="rifx-1000"),
            pytest.param(
                wav_header(riff_chunk(b"JUNK", b"\xff" * 7), fmt_chunk(999)), 999, id="odd-chunk"
            ),
            pytest.param(wav_header(fmt_chunk(999))[:28], 999, id="ends-after-rate"),
            pytest.param(wav_header(fmt_chunk(999))[:27], None, id="rate-cut"),
            pytest.param(wav_header(riff_chunk(b"data", bytes(4))), None, id="no-fmt"),
            pytest.param(wav_header(fmt_chunk(0), form=b"AVI "), None, id="riff-not-wave"),
            pytest.param(wav_header(fmt_chunk(0), magic=b"JUNK"), None, id="wave-not-riff"),
            pytest.param(
                wav_header(riff_chunk(b"JUNK", bytes(5000)), fmt_chunk(0)), None, id="past-4k"
            ),
            pytest.param(
                wav_header(b"JUNK" + struct.pack("<I", 2**32 - 44) + bytes(8), fmt_chunk(0)),
                None,
                id="chunk-size-over-2GiB",
            ),
        ],
    )
    def test_a_wav_header_libsndfile_refuses(self, tmp_path, data, expected):
        """The error names an absurd rate in a WAV header that libsndfile will not open.

        The header is parsed by hand: RIFF little-endian or RIFX big-endian, chunk
        sizes unsigned and padded to even, only the first 4 KiB read; anything
        else is reported as an unknown format, not as a made-up rate.
        """
        path = tmp_path / "bad.wav"
        path.write_bytes(data)
        message = load_error(path)
        if expected is None:
            assert message.startswith(
                f"cannot read audio {path}: not an audio file or an unsupported format ("
            )
        else:
            assert message == (
                f"cannot use audio {path}: absurd sample rate {expected} Hz in the WAV header "
                "(expected 1000 to 1000000 Hz); the file is corrupt"
            )

    def test_a_header_with_no_channels(self, tmp_path, monkeypatch):
        """This libsndfile refuses such WAVs itself; another decoder might not.

        The file is refused from its header: decoding it into the (frames, 0)
        buffer this fake header asks for would write past that buffer.
        """

        class NoChannels(sf.SoundFile):
            channels = property(lambda self: 0)

            def read(self, *args, **kwargs):
                raise AssertionError("decoded a file whose header has no channels")

        path = write_wav(tmp_path / "a.wav", tone(0.1, 44100))
        monkeypatch.setattr(sf, "SoundFile", NoChannels)
        assert load_error(path) == f"cannot use audio {path}: the header says it has 0 channels"

    @pytest.mark.parametrize("error", [RuntimeError, OSError, TypeError, ValueError])
    @pytest.mark.parametrize(
        ("text", "detail"),
        [("decoder\n crashed", "decoder crashed"), (" ", "unknown error")],
        ids=["text", "blank"],
    )
    def test_soundfile_failing_to_open(self, tmp_path, monkeypatch, error, text, detail):
        def fail(*args, **kwargs):
            raise error(text)

        path = write_wav(tmp_path / "a.wav", tone(0.1, 44100))
        monkeypatch.setattr(sf, "SoundFile", fail)
        with pytest.raises(AudioError) as info:
            load_audio(path)
        assert str(info.value) == (
            f"cannot read audio {path}: not an audio file or an unsupported format ({detail})"
        )
        assert info.value.hint == CONVERT_HINT

    @pytest.mark.parametrize(
        ("error", "detail"),
        [
            pytest.param(RuntimeError("bad frame\n  at 1.20 s"), "bad frame at 1.20 s", id="text"),
            pytest.param(
                sf.LibsndfileError(3, prefix="Error reading: "),
                sf.LibsndfileError(3).error_string,
                id="libsndfile",
            ),
            pytest.param(OSError("x" * 160), "x" * 160, id="160-chars"),
            pytest.param(ValueError("x" * 161), "x" * 157 + "...", id="161-chars"),
        ],
    )
    def test_decoding_errors(self, tmp_path, monkeypatch, error, detail):
        """One line, with the decoder's own words (cut at 160 characters)."""
        path = write_wav(tmp_path / "a.wav", tone(1.0, 44100))

        def fail(*args, **kwargs):
            raise error

        monkeypatch.setattr(sf.SoundFile, "read", fail)
        expected = f"cannot read audio {path}: decoding failed ({detail})"
        assert load_error(path) == expected
        with AudioFile(path) as audio, pytest.raises(AudioError) as info:
            audio.read(0, 100)
        assert str(info.value) == expected


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

    def test_resample_keeps_the_band_and_removes_what_the_new_rate_cannot_hold(self):
        """Kaiser-windowed sinc (resampy's kaiser_best): 19 kHz passes, 23 kHz does not alias."""
        t = torch.arange(48000, dtype=torch.float64) / 48000
        for freq, level in [(19000, (0.49, 0.51)), (23000, (0.0, 1e-4))]:
            wave = (0.5 * torch.sin(2 * math.pi * freq * t)).float()
            peak = resample(wave, 48000, 44100)[2000:-2000].abs().max()
            assert level[0] <= peak <= level[1], freq

    @pytest.mark.parametrize(("orig", "length"), [(48000, 841932), (16000, 47561), (32000, 1599)])
    def test_resample_gives_the_ceiling_of_samples(self, orig, length):
        """torchaudio's strided convolution gives one sample short of the ceiling for
        some lengths; the missing last sample is what zeros past the end give."""
        import torchaudio.functional as AF

        from soundguide.encoders.audio import _RESAMPLE_KWARGS

        wave = torch.randn(2, length, generator=torch.Generator().manual_seed(0))
        out = resample(wave, orig, 44100)
        assert out.shape == (2, -(-length * 44100 // orig))
        theirs = AF.resample(wave, orig, 44100, **_RESAMPLE_KWARGS)
        torch.testing.assert_close(out[:, : theirs.shape[-1]], theirs, rtol=0, atol=1e-5)
        longer = AF.resample(
            torch.nn.functional.pad(wave, (0, 4 * orig)), orig, 44100, **_RESAMPLE_KWARGS
        )
        torch.testing.assert_close(out, longer[:, : out.shape[-1]], rtol=0, atol=1e-5)

    @pytest.mark.parametrize(("orig", "new", "length"), [(48000, 44100, 123), (44100, 22050, 1001)])
    def test_resample_does_not_need_torchaudios_last_sample(self, monkeypatch, orig, new, length):
        """The resampling period of zeros resample pads with makes up for a short output.

        torchaudio's float32 output length is short by one even with a zero past the
        end for long inputs (18,260,935 samples from 48 kHz); a torchaudio that is
        always one short stands for it at a test's size.
        """
        import torchaudio.functional as AF

        wave = torch.randn(length, generator=torch.Generator().manual_seed(0))
        expected = resample(wave, orig, new)
        real = AF.resample
        monkeypatch.setattr(AF, "resample", lambda *args, **kw: real(*args, **kw)[..., :-1])
        out = resample(wave, orig, new)
        assert out.shape == (-(-length * new // orig),)
        torch.testing.assert_close(out, expected, rtol=0, atol=0)

    def test_resample_same_rate_is_identity(self):
        wave = torch.randn(100)
        assert resample(wave, 44100, 44100) is wave

    def test_peak_dbfs(self):
        assert peak_dbfs(torch.zeros(3)) == -math.inf
        assert peak_dbfs(torch.zeros(0)) == -math.inf
        assert peak_dbfs(torch.tensor([0.0, -0.1])) == pytest.approx(-20.0)

    @pytest.mark.parametrize(
        ("rate", "usable"), [(999, False), (1000, True), (1_000_000, True), (1_000_001, False)]
    )
    def test_sample_rate_limits_are_inclusive(self, rate, usable):
        if usable:
            assert check_waveform(tone(0.01, 44100), rate).shape == (1, 441)
        else:
            with pytest.raises(AudioError) as info:
                check_waveform(tone(0.01, 44100), rate, name="clip")
            assert str(info.value) == (
                f"cannot use clip: absurd sample rate {rate} Hz (expected 1000 to 1000000 Hz)"
            )

    @pytest.mark.parametrize(
        ("rate", "kind"), [(True, "bool"), ("44100", "str"), (None, "NoneType")]
    )
    def test_sample_rate_must_be_a_number(self, rate, kind):
        with pytest.raises(AudioError) as info:
            check_waveform(tone(0.01, 44100), rate)
        assert str(info.value) == f"cannot use waveform: sample rate must be a number, got {kind}"

    @pytest.mark.parametrize(
        ("wave", "dtype"),
        [
            (np.ones(100, np.int16), "int16"),
            (torch.ones(100, dtype=torch.int16), "torch.int16"),
            (np.array(["0.5"] * 100), "<U3"),
        ],
        ids=["numpy-int16", "torch-int16", "numpy-str"],
    )
    def test_integer_or_other_samples(self, wave, dtype):
        with pytest.raises(AudioError) as info:
            check_waveform(wave, 44100, name="clip")
        assert str(info.value) == (
            f"cannot use clip: expected floating-point samples in [-1, 1], got dtype {dtype}"
        )
        assert info.value.hint == "divide integer PCM by its full scale (e.g. 32768 for int16)"

    def test_at_most_64_channels(self):
        assert check_waveform(torch.full((64, 10), 0.5), 44100).shape == (64, 10)
        with pytest.raises(AudioError) as info:
            check_waveform(torch.full((65, 10), 0.5), 44100)
        assert str(info.value) == (
            "cannot use waveform: expected shape (C, T) with at most 64 channels, "
            "got (65, 10) (a (T, C) array? pass wave.T)"
        )
        assert info.value.hint == (
            "soundfile returns (T, C) arrays; soundguide takes (C, T) like torchaudio"
        )

    def test_not_an_array(self):
        with pytest.raises(AudioError) as info:
            check_waveform([0.5, 0.5], 44100)
        assert str(info.value) == (
            "cannot use waveform: expected a torch.Tensor or numpy array, got list"
        )

    @pytest.mark.parametrize(("dbfs", "silent"), [(-79.9, False), (-80.1, True)])
    def test_silence_threshold_is_minus_80_dbfs(self, dbfs, silent):
        wave = torch.full((100,), 10 ** (dbfs / 20))
        if silent:
            with pytest.raises(AudioError, match=r"silent \(peak -80.1 dBFS; the threshold is -80"):
                check_waveform(wave, 44100)
        else:
            assert check_waveform(wave, 44100).shape == (1, 100)

    def test_a_peak_of_exactly_minus_80_dbfs_is_audible(self):
        """A float64 peak can equal the threshold (1e-4) exactly; no float32 value can."""
        at = torch.tensor([1e-4, 0.0], dtype=torch.float64)
        assert torch.equal(InMemoryAudio(at, 44100).read(0, 2), at)
        below = torch.tensor([np.nextafter(1e-4, 0.0), 0.0], dtype=torch.float64)
        with pytest.raises(
            AudioError,
            match=r"^cannot use waveform: audio is silent from 0.00 s to 0.00 s \(peak -80.0",
        ):
            InMemoryAudio(below, 44100).read(0, 2)

    def test_one_frame_of_inverted_stereo_cancels(self):
        with pytest.raises(AudioError, match="after mixing its 2 channels to mono"):
            check_waveform(torch.tensor([[0.5], [-0.5]]), 44100)

    def test_errors_name_the_waveform(self):
        with pytest.raises(AudioError, match=r"^cannot use clip: audio is silent \(all samples"):
            check_waveform(np.zeros(100, np.float32), 44100, name="clip")
        with pytest.raises(AudioError, match=r"^cannot use clip: it contains 1 non-finite"):
            check_waveform(np.array([0.5, np.nan], np.float32), 44100, name="clip")
        with pytest.raises(AudioError, match=r"^cannot use clip: audio is silent \(all samples"):
            prepare_waveform(np.zeros(100, np.float32), 44100, name="clip")
        with pytest.raises(AudioError, match=r"^cannot use waveform: audio is silent"):
            prepare_waveform(np.zeros(100, np.float32), 44100)

    def test_prepare_resamples_to_44100_by_default(self):
        assert prepare_waveform(tone(0.5, 22050), 22050).shape == (22050,)
