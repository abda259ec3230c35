"""Time-resolved targets: one log-mel pass sliced per frame, batched encoding, smoothing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
import torch

from soundguide.core.errors import AudioError
from soundguide.encoders.audio import AudioFile
from soundguide.encoders.soundclip import (
    HOP_LENGTH,
    NUM_FRAMES,
    SAMPLE_RATE,
    SoundCLIPFrontend,
    frame_span,
    window_to_input,
)
from soundguide.video import targets as tt
from tests.video.toy_audio import noisy_share, toy_targets


def test_blocks_of_the_recording_stitch_into_the_whole_spectrogram(recording):
    frontend = SoundCLIPFrontend()
    with AudioFile(recording) as source:
        power, peaks = tt.recording_power(source, frontend, block=50)
        wave = source.read(0, source.num_samples, allow_silence=True)
        whole = frontend.power(wave)[0]
    assert power.shape == whole.shape == (128, 1 + source.num_samples // HOP_LENGTH)
    # the same frames from the same samples: only the float32 rounding of the FFT and
    # the mel product (sums over 1025 bins) may differ, far below 1e-5 of the loudest bin
    torch.testing.assert_close(power, whole, rtol=1e-5, atol=1e-5 * float(whole.max()))
    padded = torch.nn.functional.pad(wave.abs(), (0, HOP_LENGTH * power.shape[-1] - len(wave)))
    torch.testing.assert_close(peaks, padded.view(-1, HOP_LENGTH).amax(dim=1), rtol=0, atol=0)


@pytest.mark.parametrize("window", [0.5, 3.0])
def test_sliced_windows_equal_the_crop_computed_on_its_own(recording, window):
    """Windows start on the STFT hop, so a slice of the one spectrogram is the crop's own
    mel power (what `embed_audio` computes for a crop of a file), not a shifted one."""
    frontend = SoundCLIPFrontend()
    with AudioFile(recording) as source:
        power, _ = tt.recording_power(source, frontend)
        spans = tt.window_spans(24, 6.0, window, power.shape[-1])
        for a, b in spans[::5]:
            lo, hi = frame_span(a, b - a, source.num_samples)
            crop = frontend.window_power(source.read(lo, hi), a, source.num_samples, b - a)[0]
            sliced = power[:, a:b]
            torch.testing.assert_close(sliced, crop, rtol=1e-5, atol=1e-5 * float(crop.max()))
            torch.testing.assert_close(
                window_to_input(sliced[None]), window_to_input(crop[None]), rtol=0, atol=1e-5
            )


def test_windows_are_centred_on_each_frame_cut_at_the_ends_and_at_most_864_frames():
    hops_per_second = SAMPLE_RATE / HOP_LENGTH
    spans = tt.window_spans(8, 2.0, 1.0, mel_frames=345)  # 4 s
    width = tt.window_hops(1.0)
    assert width == round(hops_per_second)
    for k, (a, b) in enumerate(spans):
        centre = round((k + 0.5) / 2.0 * hops_per_second)
        assert a == max(0, centre - width // 2) and b == min(345, centre - width // 2 + width)
    assert spans[0][0] == 0 and spans[-1][1] == 345  # cut by the recording's start and end
    long = tt.window_spans(1, 0.05, 30.0, mel_frames=10_000)
    assert long[0][1] - long[0][0] == NUM_FRAMES  # longer windows: the 864 frames around t


def test_frame_count_covers_the_recording():
    assert tt.frame_count(4.0, 6) == 24
    assert tt.frame_count(4.01, 6) == 25
    assert tt.frame_count(0.01, 12) == 1


def test_the_log_mel_is_computed_once_and_windows_are_encoded_in_batches(recording):
    """A long recording must not cost one spectrogram per frame: the mel transform runs
    once per block of the recording, the encoder once per batch of windows."""
    frontend = SoundCLIPFrontend()
    mel_calls, batches = [], []
    frontend.mel.register_forward_hook(lambda *args: mel_calls.append(1))
    with AudioFile(recording) as source:
        power, peaks = tt.recording_power(source, frontend)
    frames = 24
    spans = tt.window_spans(frames, 6.0, 2.0, power.shape[-1])

    def encode(x):
        batches.append(x.shape[0])
        return torch.randn(x.shape[0], 8)

    out = tt.frame_embeddings(power, peaks, spans, encode, batch=10)
    assert len(mel_calls) == math.ceil(power.shape[-1] / tt.BLOCK_FRAMES) == 1
    assert batches == [10, 10, 4]
    assert out.shape == (frames, 8)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(frames))


def test_silent_windows_take_the_nearest_audible_one_and_all_silence_is_an_error(tmp_path):
    wave = np.zeros(3 * SAMPLE_RATE, dtype=np.float32)
    wave[: SAMPLE_RATE // 2] = 0.3 * np.random.default_rng(0).uniform(-1, 1, SAMPLE_RATE // 2)
    path = tmp_path / "burst-then-silence.wav"
    sf.write(path, wave, SAMPLE_RATE)
    frontend = SoundCLIPFrontend()
    with AudioFile(path) as source:
        power, peaks = tt.recording_power(source, frontend)
    spans = tt.window_spans(6, 2.0, 0.2, power.shape[-1])
    out = tt.frame_embeddings(power, peaks, spans, lambda x: x.flatten(1)[:, :4] + 1, batch=4)
    for k in range(2, 6):  # silent from 0.5 s on: all take frame 0's window (the audible one)
        torch.testing.assert_close(out[k], out[0])
    with pytest.raises(AudioError, match="silent in every frame's window"):
        tt.frame_embeddings(power, torch.zeros_like(peaks), spans, lambda x: x, batch=4)


def test_ema_reaches_63_percent_after_tau_and_the_moving_average_is_a_centred_box():
    fps, tau = 10.0, 0.5
    a, b = torch.eye(2)
    steps = torch.stack([a] * 20 + [b] * 20)
    ema = tt.smooth(steps, fps, "ema", tau)
    # before the change nothing moves (causal), then b's share grows as 1 - exp(-t / tau)
    torch.testing.assert_close(ema[:20], steps[:20])
    share = ema[:, 1] / (ema[:, 0] + ema[:, 1])
    k = 20 + round(tau * fps) - 1  # the 5th frame after the change: 5 updates towards b
    assert share[k].item() == pytest.approx(1 - math.exp(-round(tau * fps) / (tau * fps)), abs=1e-4)
    box = tt.smooth(steps, fps, "moving_average", tau)  # 5 frames wide
    changed = [k for k in range(40) if not torch.allclose(box[k], steps[k])]
    assert changed == [18, 19, 20, 21]
    torch.testing.assert_close(tt.smooth(steps, fps, "none", 0.0), steps)


def test_toy_targets_switch_at_the_boundary_no_wider_than_window_and_smoothing(recording):
    """Tone (A) for 2 s, then noise (B): frames whose window lies in one half have that
    half's target; with ema, B is reached within a few tau after the last mixed window."""
    fps, window = 6.0, 0.5
    a, b = toy_targets()
    frontend = SoundCLIPFrontend()
    with AudioFile(recording) as source:
        power, peaks = tt.recording_power(source, frontend)
    spans = tt.window_spans(24, fps, window, power.shape[-1])
    raw = tt.frame_embeddings(
        power,
        peaks,
        spans,
        lambda x: (1 - noisy_share(x)[:, None]) * a + noisy_share(x)[:, None] * b,
    )
    cos_a, cos_b = raw @ a, raw @ b
    boundary = 2.0
    for k in range(24):
        t = (k + 0.5) / fps
        if t + window / 2 < boundary - 0.05:
            assert cos_a[k] > 0.99, k
        elif t - window / 2 > boundary + 0.05:
            assert cos_b[k] > 0.99, k
    tau = 0.5
    ema = tt.smooth(raw, fps, "ema", tau)
    for k in range(24):
        t = (k + 0.5) / fps
        if t - window / 2 > boundary + 3 * tau:  # 95 % of the way after 3 tau
            assert (ema[k] @ b) / (ema[k] @ a + ema[k] @ b) > 0.95, k
        if t + window / 2 < boundary - 0.05:  # causal: no change before the sound changes
            assert ema[k] @ a > 0.99, k
