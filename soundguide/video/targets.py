"""Time-resolved audio targets: one SoundCLIP embedding per video frame, in one pass.

The recording's mel power is computed once (block by block, so the decoded
audio in memory is one block, not the file), and each video frame's window is
a *slice* of it: the frames of the windows of neighbouring video frames are
shared, never recomputed. Windows are aligned to the STFT hop: video frame
``k`` (time ``(k + 0.5) / fps``, the middle of its display interval) gets the
mel frames ``[c - W // 2, c - W // 2 + W)`` with ``c`` the hop nearest that
time and ``W`` the window in hops, so a slice equals the mel power of that
crop computed on its own (:meth:`SoundCLIPFrontend.window_power`, which reads
just the crop's samples), and then goes through the original code's steps
(dB with the window's own loudest bin, padding, resize) as any crop does.

- windows shorter than SoundCLIP's 864 frames, and windows cut by the
  recording's start or end, are padded as the original code pads short clips
  (zeros after the clip, on the 864-frame canvas);
- windows longer than 864 frames are cropped to the 864 frames around the
  frame's time;
- a silent window (peak below -80 dBFS) has no embedding of its own: it takes
  the nearest audible window's (the front end would turn silence into an
  all-ones picture); a recording silent throughout is an error.

The windows go through the encoder ``batch`` at a time; the L2-normalized
embeddings are then smoothed in time: ``none``, ``moving_average`` (a centred
box ``tau`` seconds wide) or ``ema`` (causal exponential, time constant ``tau``
seconds: a change in the sound reaches 63 % after ``tau``).

Shapes: recording (T samples) -> mel power (128, F), F = 1 + T // 512 ->
windows (B, 1, 128, 512) -> targets (frames, D).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F

from soundguide.core.errors import AudioError

Smoothing = Literal["none", "moving_average", "ema"]
BLOCK_FRAMES = 4096
"""Mel frames computed per block of decoded audio (47 s at 44.1 kHz)."""


def frame_count(seconds: float, fps: float) -> int:
    """Video frames that cover a recording: ``ceil(seconds * fps)``, at least 1."""
    return max(1, math.ceil(seconds * fps - 1e-9))


def window_hops(window: float) -> int:
    """A window of ``window`` seconds in STFT hops (mel frames), at least 1."""
    from soundguide.encoders.soundclip import HOP_LENGTH, SAMPLE_RATE

    return max(1, round(window * SAMPLE_RATE / HOP_LENGTH))


def window_spans(frames: int, fps: float, window: float, mel_frames: int) -> list[tuple[int, int]]:
    """Per video frame, the mel frames ``[a, b)`` of its window, cut to ``[0, mel_frames)``.

    The window is centred (to the hop) on the middle of the video frame's
    display interval and at most 864 frames long (longer ones are cropped
    around the centre).
    """
    from soundguide.encoders.soundclip import HOP_LENGTH, NUM_FRAMES, SAMPLE_RATE

    width = min(window_hops(window), NUM_FRAMES)
    spans = []
    for k in range(frames):
        centre = round((k + 0.5) / fps * SAMPLE_RATE / HOP_LENGTH)
        a = centre - width // 2
        spans.append((max(0, a), min(mel_frames, a + width)))
    return spans


def recording_power(
    source, frontend, block: int = BLOCK_FRAMES
) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole recording's mel power and each mel frame's peak level, block by block.

    ``source``: an :class:`~soundguide.encoders.audio.AudioFile` (or
    ``InMemoryAudio``) at 44.1 kHz. Output: power (128, F) and peaks (F,), the
    largest absolute sample among the 512 samples starting at each hop.
    """
    from soundguide.encoders.soundclip import HOP_LENGTH, SoundCLIPFrontend, frame_span

    total = source.num_samples
    frames = SoundCLIPFrontend.num_frames(total)
    device = frontend.mel.spectrogram.window.device
    powers, peaks = [], []
    for first in range(0, frames, block):
        count = min(block, frames - first)
        lo, hi = frame_span(first, count, total)
        segment = source.read(lo, hi, allow_silence=True)
        powers.append(frontend.window_power(segment.to(device), first, total, count)[0].cpu())
        start = first * HOP_LENGTH - lo
        body = segment[start : start + count * HOP_LENGTH].abs()
        body = F.pad(body, (0, count * HOP_LENGTH - body.shape[0]))
        peaks.append(body.view(count, HOP_LENGTH).amax(dim=1))
        del segment
    return torch.cat(powers, dim=-1), torch.cat(peaks)


@torch.no_grad()
def frame_embeddings(
    power: torch.Tensor,
    peaks: torch.Tensor,
    spans: list[tuple[int, int]],
    encode: Callable[[torch.Tensor], torch.Tensor],
    *,
    batch: int = 16,
) -> torch.Tensor:
    """The L2-normalized embedding of each span's window; silent windows take the nearest
    audible one's. ``encode``: (B, 1, 128, 512) -> (B, D). Output: (len(spans), D)."""
    from soundguide.encoders.audio import SILENCE_DBFS
    from soundguide.encoders.soundclip import window_to_input

    floor = 10.0 ** (SILENCE_DBFS / 20.0)
    audible = [b > a and bool(peaks[a:b].max() >= floor) for a, b in spans]
    if not any(audible):
        raise AudioError(
            "the recording is silent in every frame's window (peak below -80 dBFS)",
            hint="the audio encoder needs audible sound",
        )
    rows: dict[int, torch.Tensor] = {}
    todo = [k for k, ok in enumerate(audible) if ok]
    for i in range(0, len(todo), batch):
        ks = todo[i : i + batch]
        inputs = torch.cat([window_to_input(power[None, :, slice(*spans[k])]) for k in ks])
        out = F.normalize(encode(inputs).float(), dim=-1).cpu()
        rows.update(zip(ks, out, strict=True))
    found = sorted(rows)
    result = []
    for k in range(len(spans)):
        if k not in rows:  # the nearest audible window (the earlier one on a tie)
            k = min(found, key=lambda j, k=k: (abs(j - k), j))
        result.append(rows[k])
    return torch.stack(result)


def smooth(embeddings: torch.Tensor, fps: float, smoothing: Smoothing, tau: float) -> torch.Tensor:
    """Smooth (frames, D) embeddings in time; the output rows are L2-normalized.

    ``moving_average``: the mean over a centred box of ``round(tau * fps)``
    frames (odd, at least 1; cut at the ends). ``ema``: ``y_k = a y_{k-1} +
    (1 - a) x_k`` with ``a = exp(-1 / (tau * fps))``, ``y_0 = x_0``.
    """
    if smoothing == "none" or tau <= 0:
        return F.normalize(embeddings, dim=-1)
    if smoothing == "moving_average":
        half = max(1, round(tau * fps)) // 2
        padded = F.pad(embeddings.T[None], (half, half))
        ones = F.pad(torch.ones(1, 1, embeddings.shape[0]), (half, half))
        kernel = torch.ones(1, 1, 2 * half + 1)
        sums = F.conv1d(padded.transpose(0, 1), kernel).squeeze(1)
        counts = F.conv1d(ones, kernel)[0]
        return F.normalize((sums / counts).T, dim=-1)
    if smoothing == "ema":
        a = math.exp(-1.0 / (tau * fps))
        out = [embeddings[0]]
        for row in embeddings[1:]:
            out.append(a * out[-1] + (1 - a) * row)
        return F.normalize(torch.stack(out), dim=-1)
    raise AudioError(f"unknown smoothing {smoothing!r}; available: none, moving_average, ema")
