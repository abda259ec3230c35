"""Robust audio loading: any file libsndfile reads, to a mono float32 waveform.

``load_audio`` reads WAV, FLAC, OGG/Vorbis, MP3 (whatever the installed
libsndfile decodes) with :mod:`soundfile`, checks the header before decoding,
decodes only the window asked for, mixes to mono by the channel mean and
resamples with :func:`torchaudio.functional.resample`.

Every way an input can be unusable ends in one :class:`AudioError` line:
missing or empty files, files that are not audio, headers with no frames or an
absurd sample rate, NaN/inf samples, and silence. Silence is an error because
the SoundCLIP front end normalizes by the loudest bin (dB with ``ref=max``):
an all-zero input becomes an all-ones spectrogram, and a near-silent one a
picture of its noise floor, both of which the encoder happily embeds.

Waveforms passed directly as tensors or arrays go through the same checks with
:func:`check_waveform` / :func:`prepare_waveform`.
"""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path

import numpy as np
import torch

from soundguide.core.errors import AudioError

SILENCE_DBFS = -80.0
"""A waveform whose peak is below this level (dB relative to full scale 1.0) is silent."""

MIN_SAMPLE_RATE = 1_000
MAX_SAMPLE_RATE = 1_000_000
MAX_CHANNELS = 64

# torchaudio's documented equivalent of resampy's ``kaiser_best``, which is what
# librosa 0.8 (the original code's ``librosa.load(sr=44100)``) resampled with.
_RESAMPLE_KWARGS = {
    "lowpass_filter_width": 64,
    "rolloff": 0.9475937167399596,
    "resampling_method": "sinc_interp_kaiser",
    "beta": 14.769656459379492,
}

_MAGIC = [
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a zip archive (a torch checkpoint?)"),
    (b"\x1f\x8b", "a gzip archive"),
]


def load_audio(
    path: str | os.PathLike[str],
    sample_rate: int = 44100,
    *,
    max_seconds: float = 600.0,
    offset_seconds: float = 0.0,
    duration_seconds: float | None = None,
) -> torch.Tensor:
    """Read an audio file as a mono float32 waveform at ``sample_rate``.

    The duration is read from the header first: a file longer than
    ``max_seconds`` is refused before anything is decoded, unless a window
    (``offset_seconds``, ``duration_seconds``) of at most ``max_seconds`` is
    asked for, in which case only that window is decoded.

    Output: (T,) float32 on the CPU, T >= 1.

    Raises :class:`AudioError` (one line) for anything unusable.
    """
    path = Path(path).expanduser()
    target = _check_target_rate(sample_rate)
    if not math.isfinite(offset_seconds) or offset_seconds < 0:
        raise AudioError(f"offset_seconds must be >= 0, got {offset_seconds}")
    if duration_seconds is not None and not (
        math.isfinite(duration_seconds) and duration_seconds > 0
    ):
        raise AudioError(f"duration_seconds must be > 0, got {duration_seconds}")
    if not (max_seconds > 0):
        raise AudioError(f"max_seconds must be > 0, got {max_seconds}")

    import soundfile as sf

    if not path.exists():
        raise AudioError(f"cannot read audio {path}: no such file")
    if path.is_dir():
        raise AudioError(f"cannot read audio {path}: it is a directory, not a file")
    if path.stat().st_size == 0:
        raise AudioError(f"cannot read audio {path}: the file is empty (0 bytes)")

    try:
        handle = sf.SoundFile(str(path))
    except sf.LibsndfileError as exc:
        raise AudioError(_open_error(path, exc.error_string)) from None
    except (RuntimeError, OSError, TypeError, ValueError) as exc:
        raise AudioError(_open_error(path, str(exc))) from None

    with handle:
        rate = int(handle.samplerate)
        frames = int(handle.frames)
        channels = int(handle.channels)
        if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
            raise AudioError(
                f"cannot use audio {path}: absurd sample rate {rate} Hz in the header "
                f"(expected {MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} Hz); the file is corrupt"
            )
        if frames <= 0:
            raise AudioError(f"cannot use audio {path}: the header says it holds 0 frames")
        if channels <= 0:
            raise AudioError(f"cannot use audio {path}: the header says it has 0 channels")
        total = frames / rate
        start = int(round(offset_seconds * rate))
        if start >= frames:
            raise AudioError(
                f"cannot use audio {path}: offset_seconds={offset_seconds:g} is past its end "
                f"({total:.2f} s)"
            )
        count = frames - start
        if duration_seconds is not None:
            count = min(count, max(1, int(round(duration_seconds * rate))))
        if count / rate > max_seconds:
            windowed = offset_seconds > 0 or duration_seconds is not None
            what = "the requested window is" if windowed else "it is"
            raise AudioError(
                f"cannot use audio {path}: {what} {count / rate:.1f} s long, "
                f"more than max_seconds={max_seconds:g}",
                hint="pass offset_seconds/duration_seconds to read a window, or raise max_seconds",
            )
        try:
            if start:
                handle.seek(start)
            data = handle.read(count, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as exc:
            detail = getattr(exc, "error_string", None) or str(exc)
            raise AudioError(
                f"cannot read audio {path}: decoding failed ({_short(detail)})"
            ) from None
    if data.shape[0] == 0:
        raise AudioError(f"cannot read audio {path}: no audio frames could be decoded")

    wave = torch.from_numpy(np.ascontiguousarray(data.T))
    _check_content(wave, f"cannot use audio {path}")
    return resample(to_mono(wave), rate, target)


def check_waveform(
    wave: torch.Tensor | np.ndarray, sample_rate: int, *, name: str = "waveform"
) -> torch.Tensor:
    """Validate a waveform given directly (not read from a file).

    Input: (T,) or (C, T) floating point, samples nominally in [-1, 1].
    Output: (C, T) float32 on the input's device (C = 1 for a 1-D input).

    Raises :class:`AudioError` when the shape or dtype is wrong, the sample rate
    is absurd, a sample is NaN/inf, or the waveform (or its mono mix) is silent.
    """
    what = f"cannot use {name}"
    if isinstance(wave, np.ndarray):
        if not np.issubdtype(wave.dtype, np.floating):
            raise AudioError(
                f"{what}: expected floating-point samples in [-1, 1], got dtype {wave.dtype}",
                hint="divide integer PCM by its full scale (e.g. 32768 for int16)",
            )
        wave = torch.from_numpy(np.ascontiguousarray(wave))
    elif not isinstance(wave, torch.Tensor):
        raise AudioError(
            f"{what}: expected a torch.Tensor or numpy array, got {type(wave).__name__}"
        )
    if not wave.is_floating_point():
        raise AudioError(
            f"{what}: expected floating-point samples in [-1, 1], got dtype {wave.dtype}",
            hint="divide integer PCM by its full scale (e.g. 32768 for int16)",
        )
    if wave.dim() == 1:
        wave = wave.unsqueeze(0)
    elif wave.dim() != 2:
        raise AudioError(f"{what}: expected shape (T,) or (C, T), got {tuple(wave.shape)}")
    channels, length = wave.shape
    if channels > MAX_CHANNELS:
        raise AudioError(
            f"{what}: expected shape (C, T) with at most {MAX_CHANNELS} channels, "
            f"got {tuple(wave.shape)} (a (T, C) array? pass wave.T)",
            hint="soundfile returns (T, C) arrays; soundguide takes (C, T) like torchaudio",
        )
    if channels == 0 or length == 0:
        raise AudioError(f"{what}: it is empty (shape {tuple(wave.shape)})")
    _check_rate(sample_rate, what)
    wave = wave.to(torch.float32)
    _check_content(wave, what)
    return wave


def prepare_waveform(
    wave: torch.Tensor | np.ndarray,
    sample_rate: int,
    target_rate: int = 44100,
    *,
    name: str = "waveform",
) -> torch.Tensor:
    """:func:`check_waveform`, then mix to mono and resample to ``target_rate``.

    Input: (T,) or (C, T). Output: (T',) float32 on the input's device.
    """
    target = _check_target_rate(target_rate)
    checked = check_waveform(wave, sample_rate, name=name)
    return resample(to_mono(checked), int(sample_rate), target)


def to_mono(wave: torch.Tensor) -> torch.Tensor:
    """Channel mean, as librosa's ``to_mono``. Input: (C, T). Output: (T,)."""
    return wave.mean(dim=0)


def resample(wave: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """Band-limited resampling (Kaiser-windowed sinc, resampy ``kaiser_best`` settings).

    Input: (..., T). Output: (..., ceil(T * new_rate / orig_rate)); a copy-free
    no-op when the rates are equal.
    """
    if int(orig_rate) == int(new_rate):
        return wave
    import torchaudio.functional as AF

    return AF.resample(wave, int(orig_rate), int(new_rate), **_RESAMPLE_KWARGS)


def peak_dbfs(wave: torch.Tensor) -> float:
    """Peak level in dB relative to full scale 1.0 (``-inf`` for all zeros)."""
    peak = float(wave.detach().abs().max()) if wave.numel() else 0.0
    return 20.0 * math.log10(peak) if peak > 0 else -math.inf


# -- helpers ------------------------------------------------------------------------


def _check_content(wave: torch.Tensor, what: str) -> None:
    """Finite and audible, per channel and after the mono mix. Input: (C, T)."""
    finite = torch.isfinite(wave)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise AudioError(f"{what}: it contains {bad} non-finite samples (NaN or inf)")
    threshold = 10.0 ** (SILENCE_DBFS / 20.0)
    channel_peaks = wave.abs().amax(dim=1)
    loudest = float(channel_peaks.max())
    if loudest < threshold:
        level = "all samples are zero" if loudest == 0 else f"peak {peak_dbfs(wave):.1f} dBFS"
        raise AudioError(
            f"{what}: audio is silent ({level}; the threshold is {SILENCE_DBFS:g} dBFS)",
            hint="the audio encoder needs audible sound",
        )
    if wave.shape[0] > 1:
        mixed = float(wave.mean(dim=0).abs().max())
        if mixed < threshold:
            raise AudioError(
                f"{what}: audio is silent after mixing its {wave.shape[0]} channels to mono: "
                "the channels cancel each other (polarity-inverted stereo?)",
                hint="use a single channel (e.g. pass wave[0])",
            )


def _check_rate(rate: object, what: str) -> int:
    if isinstance(rate, bool) or not isinstance(rate, int | float | np.integer | np.floating):
        raise AudioError(f"{what}: sample rate must be a number, got {type(rate).__name__}")
    if not (math.isfinite(rate) and rate == int(rate)):
        raise AudioError(f"{what}: sample rate must be a whole number of Hz, got {rate}")
    if not MIN_SAMPLE_RATE <= int(rate) <= MAX_SAMPLE_RATE:
        raise AudioError(
            f"{what}: absurd sample rate {rate} Hz "
            f"(expected {MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} Hz)"
        )
    return int(rate)


def _check_target_rate(rate: object) -> int:
    return _check_rate(rate, "cannot resample audio")


def _open_error(path: Path, detail: str) -> str:
    kind = _sniff(path)
    if kind is not None:
        return f"cannot read audio {path}: not an audio file (it looks like {kind})"
    header_rate = _wav_header_rate(path)
    if header_rate is not None and not MIN_SAMPLE_RATE <= header_rate <= MAX_SAMPLE_RATE:
        return (
            f"cannot use audio {path}: absurd sample rate {header_rate} Hz in the WAV header "
            f"(expected {MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} Hz); the file is corrupt"
        )
    detail = _short(detail.strip()) or "unknown error"
    return f"cannot read audio {path}: not an audio file or an unsupported format ({detail})"


def _sniff(path: Path) -> str | None:
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError:
        return None
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    return None


def _wav_header_rate(path: Path) -> int | None:
    """The sample rate field of a RIFF/WAVE ``fmt`` chunk, read by hand.

    libsndfile refuses to open a WAV whose rate is 0 without saying so; this
    lets the error name what the header holds.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return None
    if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
        return None
    endian = "<" if head[:4] == b"RIFF" else ">"
    pos = 12
    while pos + 8 <= len(head):
        chunk_id = head[pos : pos + 4]
        (size,) = struct.unpack(endian + "I", head[pos + 4 : pos + 8])
        if chunk_id == b"fmt " and pos + 16 <= len(head):
            (rate,) = struct.unpack(endian + "I", head[pos + 12 : pos + 16])
            return int(rate)
        pos += 8 + size + (size & 1)
    return None


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
