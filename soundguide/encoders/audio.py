"""Robust audio loading: any file libsndfile reads, to a mono float32 waveform.

Two readers, both with :mod:`soundfile` (WAV, FLAC, OGG/Vorbis, MP3: whatever
the installed libsndfile decodes), mixing to mono by the channel mean and
resampling with :func:`torchaudio.functional.resample`:

- :func:`load_audio` decodes a whole short clip (evaluation and curation read
  datasets of 5-30 s clips with it); files longer than ``max_seconds`` are
  refused from the header, before anything is decoded.
- :class:`AudioFile` (and :func:`read_window`) decodes only a window of a file
  of any length: it seeks, reads the window plus the margin the resampler's
  filter needs, starting at a sample where the resampler's phase is the one
  it has on the whole file, so the samples equal (up to float rounding) those
  of :func:`load_audio` sliced. Memory follows the window, not the file.
  :class:`InMemoryAudio` gives a waveform already in memory the same interface.

Every way an input can be unusable ends in one :class:`AudioError` line:
missing or empty files, files that are not audio, headers with no frames or an
absurd sample rate, NaN/inf samples, and silence (of the whole clip, or of the
window read, named by its time range). Silence is an error because the
SoundCLIP front end normalizes by the loudest bin (dB with ``ref=max``): an
all-zero input becomes an all-ones spectrogram, and a near-silent one a
picture of its noise floor, both of which the encoder happily embeds.

Waveforms passed directly as tensors or arrays go through the same checks with
:func:`check_waveform` / :func:`prepare_waveform`.
"""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from soundguide.core.errors import AudioError, one_line

SILENCE_DBFS = -80.0
"""A waveform whose peak is below this level (dB relative to full scale 1.0) is silent."""

MIN_SAMPLE_RATE = 1_000
MAX_SAMPLE_RATE = 1_000_000
MAX_CHANNELS = 64

MP3_PREROLL = 16384
"""Source frames decoded and dropped before a window of an MP3 file (see :class:`AudioFile`).

Measured with libsndfile 1.2 / libmpg123: up to 5300 samples after a seek are
wrong (about 10 frames at 22.05 kHz, 4 at 44.1 kHz); from 6144 on they equal
the whole file's."""

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


def audio_header(path: str | os.PathLike[str]) -> tuple[int, int, int]:
    """(sample rate, frames, channels) of an audio file from its header, nothing decoded;
    the :class:`AudioError` of :func:`load_audio` for a file it could not read."""
    handle, rate, frames, channels = _open(Path(path))
    handle.close()
    return rate, frames, channels


def load_audio(
    path: str | os.PathLike[str],
    sample_rate: int = 44100,
    *,
    max_seconds: float = 600.0,
    offset_seconds: float = 0.0,
    duration_seconds: float | None = None,
    too_long_hint: str | None = None,
) -> torch.Tensor:
    """Read a whole short audio file as a mono float32 waveform at ``sample_rate``.

    The duration is read from the header first: a file longer than
    ``max_seconds`` is refused before anything is decoded, unless a window
    (``offset_seconds``, ``duration_seconds``) of at most ``max_seconds`` is
    asked for, in which case only that window is decoded (from the file's own
    sample grid, then resampled on its own: for windows that equal a slice of
    the whole file, use :class:`AudioFile`). ``too_long_hint`` replaces the
    hint of the too-long error, so that a caller can name its own options.

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

    handle, rate, frames, _ = _open(path)
    with handle:
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
                hint=too_long_hint
                or "load_audio decodes whole clips: pass offset_seconds/duration_seconds "
                "to read a window, or raise max_seconds",
            )
        try:
            if start:
                handle.seek(start)
            data = handle.read(count, dtype="float32", always_2d=True)
        except _decode_errors() as exc:
            raise AudioError(
                f"cannot read audio {path}: decoding failed ({_detail(exc)})"
            ) from None
    if data.shape[0] == 0:
        raise AudioError(f"cannot read audio {path}: no audio frames could be decoded")

    wave = torch.from_numpy(np.ascontiguousarray(data.T))
    _check_content(wave, f"cannot use audio {path}")
    return resample(to_mono(wave), rate, target)


class AudioWindow(NamedTuple):
    """What :func:`read_window` returns."""

    wave: torch.Tensor
    """(stop - start,) float32: the window, mono, at the target rate (cut at the file's end)."""
    num_samples: int
    """The whole file's length at the target rate (from the header)."""
    seconds: float
    """The whole file's duration (header frames / header rate)."""


def read_window(
    path: str | os.PathLike[str], start: int, stop: int, sample_rate: int = 44100
) -> AudioWindow:
    """Samples ``[start, stop)`` of a file at ``sample_rate``, decoding only that window.

    One :meth:`AudioFile.read`; see there. Output: :class:`AudioWindow`.
    """
    with AudioFile(path, sample_rate) as audio:
        wave = audio.read(start, stop)
        return AudioWindow(wave, audio.num_samples, audio.seconds)


class AudioFile:
    """An audio file read window by window at a target rate; never decoded whole.

    Opening reads the header only (with every check :func:`load_audio` makes
    on it). :meth:`read` returns samples ``[start, stop)`` of the file as it
    would be after decoding it whole, mixing to mono and resampling to
    ``sample_rate``, that is ``load_audio(path)[start:stop]`` up to float
    rounding, while decoding only::

        the window, mapped to the file's rate
        + the resampler's filter half-width on each side (lowpass_filter_width 64)
        + up to one resampling period: the read starts at a source sample that
          is a multiple of ``file_rate / gcd(file_rate, sample_rate)``, where the
          resampler's polyphase filter is in the phase it has on the whole file
        + for MP3, a decoder pre-roll (libmpg123 decodes the first frames after
          a seek without their bit reservoir; the pre-roll is decoded and dropped)

    so memory and time follow the window, whatever the file's length. Use it as
    a context manager (or call :meth:`close`).

    Attributes: ``path``, ``sample_rate`` (target), ``file_rate``, ``file_frames``,
    ``channels``, ``num_samples`` (the file's length at the target rate) and
    ``seconds`` (its duration), all from the header.
    """

    def __init__(self, path: str | os.PathLike[str], sample_rate: int = 44100) -> None:
        self.path = Path(path).expanduser()
        self.sample_rate = _check_target_rate(sample_rate)
        self._handle, self.file_rate, self.file_frames, self.channels = _open(self.path)
        gcd = math.gcd(self.file_rate, self.sample_rate)
        self._orig, self._new = self.file_rate // gcd, self.sample_rate // gcd
        # ceil(frames * new / orig) in integers: the length of the whole file resampled
        self.num_samples = -(-self.file_frames * self._new // self._orig)
        self.seconds = self.file_frames / self.file_rate
        self._width = resample_margin(self.file_rate, self.sample_rate)
        self._preroll = MP3_PREROLL if self._handle.format == "MP3" else 0

    def __enter__(self) -> AudioFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._handle.close()

    def read(
        self,
        start: int,
        stop: int,
        *,
        allow_silence: bool = False,
        silence_hint: str | None = None,
    ) -> torch.Tensor:
        """Samples ``[start, stop)`` at the target rate, mono; ``stop`` is cut at the end.

        Output: (min(stop, num_samples) - start,) float32 on the CPU.

        Raises :class:`AudioError` when the window is empty or starts past the
        end, when the samples read hold NaN/inf, and (unless ``allow_silence``)
        when the window is silent, naming its time range; ``silence_hint``
        replaces that error's hint (the caller knows where else to look).
        """
        start, stop = _check_span(start, stop, self.num_samples, self.path, self.sample_rate)
        o, n = self._orig, self._new
        if o == n:
            lo, hi = start, stop
        else:
            # Output block k (samples k*n .. k*n+n-1) reads source samples
            # [k*o - width, k*o + o + width); reading from a multiple of o keeps
            # the blocks, and so the filter phases, those of the whole file.
            first, last = start // n, -(-stop // n)
            lo = max(0, first - -(-self._width // o)) * o
            hi = min(self.file_frames, last * o + self._width)
        data = self._decode(lo, hi)
        what = f"cannot use audio {self.path}"
        where = f" from {start / self.sample_rate:.2f} s to {stop / self.sample_rate:.2f} s"
        _check_finite(data, what, where)
        if not allow_silence:
            # the source samples of the window itself, not the filter's margins
            a = max(0, start * o // n - lo)
            b = min(hi, -(-stop * o // n)) - lo
            _check_audible(data[:, a : max(b, a + 1)], what, where, silence_hint)
        mono = to_mono(data)
        if o == n:
            return mono
        if hi == self.file_frames:
            # one more block of the zeros the resampler pads with, so the
            # float rounding of torchaudio's output length cannot cut the end
            mono = torch.nn.functional.pad(mono, (0, o))
        out = resample(mono, self.file_rate, self.sample_rate)
        offset = lo // o * n
        return out[start - offset : stop - offset].contiguous()

    def _decode(self, lo: int, hi: int) -> torch.Tensor:
        """Source frames [lo, hi) as (C, hi - lo) float32."""
        seek = max(0, lo - self._preroll)
        try:
            self._handle.seek(seek)
            data = self._handle.read(hi - seek, dtype="float32", always_2d=True)
        except _decode_errors() as exc:
            raise AudioError(
                f"cannot read audio {self.path}: decoding failed ({_detail(exc)})"
            ) from None
        if data.shape[0] < hi - seek:
            end = (seek + data.shape[0]) / self.file_rate
            raise AudioError(
                f"cannot read audio {self.path}: decoding stopped at {end:.2f} s, before the "
                f"{self.seconds:.2f} s its header gives (a truncated or corrupt file)",
                hint="re-encode the file (e.g. ffmpeg -i in.mp3 out.wav)",
            )
        return torch.from_numpy(np.ascontiguousarray(data[lo - seek :].T))


class InMemoryAudio:
    """A mono waveform already in memory, behind :class:`AudioFile`'s reading interface.

    Lets a caller read windows of a tensor and of a file with one code path
    (the same window checks, the same errors). Input: (T,) at ``sample_rate``.
    """

    def __init__(self, wave: torch.Tensor, sample_rate: int, *, name: str = "waveform") -> None:
        if wave.dim() != 1 or wave.numel() == 0:
            raise AudioError(f"cannot use {name}: expected a non-empty (T,) waveform")
        self.wave = wave
        self.name = name
        self.sample_rate = _check_target_rate(sample_rate)
        self.num_samples = wave.shape[0]
        self.seconds = self.num_samples / self.sample_rate

    def __enter__(self) -> InMemoryAudio:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def close(self) -> None:
        pass

    def read(
        self,
        start: int,
        stop: int,
        *,
        allow_silence: bool = False,
        silence_hint: str | None = None,
    ) -> torch.Tensor:
        """As :meth:`AudioFile.read`, on the waveform (a view, not a copy)."""
        start, stop = _check_span(start, stop, self.num_samples, self.name, self.sample_rate)
        window = self.wave[start:stop]
        what = f"cannot use {self.name}"
        where = f" from {start / self.sample_rate:.2f} s to {stop / self.sample_rate:.2f} s"
        _check_finite(window[None], what, where)
        if not allow_silence:
            _check_audible(window[None], what, where, silence_hint)
        return window


def resample_margin(orig_rate: int, new_rate: int) -> int:
    """Half-width in source samples of :func:`resample`'s filter (torchaudio's ``width``).

    An output sample depends on the source samples within this distance (plus
    one resampling period); 0 when the rates are equal.
    """
    if int(orig_rate) == int(new_rate):
        return 0
    gcd = math.gcd(int(orig_rate), int(new_rate))
    orig, new = int(orig_rate) // gcd, int(new_rate) // gcd
    base = min(orig, new) * _RESAMPLE_KWARGS["rolloff"]
    return math.ceil(_RESAMPLE_KWARGS["lowpass_filter_width"] * orig / base)


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
    orig_rate, new_rate = int(orig_rate), int(new_rate)
    if orig_rate == new_rate:
        return wave
    import torchaudio.functional as AF

    # torchaudio returns as many samples as its strided convolution gives, one
    # short of the ceiling for some lengths (e.g. 841932 samples from 48 kHz);
    # zeros past the end (as its own padding) add that sample and change no other
    length = -(-wave.shape[-1] * new_rate // orig_rate)
    period = orig_rate // math.gcd(orig_rate, new_rate)
    padded = torch.nn.functional.pad(wave, (0, period))
    return AF.resample(padded, orig_rate, new_rate, **_RESAMPLE_KWARGS)[..., :length]


def peak_dbfs(wave: torch.Tensor) -> float:
    """Peak level in dB relative to full scale 1.0 (``-inf`` for all zeros)."""
    peak = float(wave.detach().abs().max()) if wave.numel() else 0.0
    return 20.0 * math.log10(peak) if peak > 0 else -math.inf


# -- helpers ------------------------------------------------------------------------


def _open(path: Path) -> tuple[Any, int, int, int]:
    """Open ``path`` with soundfile and check its header: (handle, rate, frames, channels).

    Nothing is decoded. Raises :class:`AudioError` for missing, empty,
    non-audio or corrupt files (absurd rate, no frames, no channels).
    """
    import soundfile as sf

    if not path.exists():
        raise AudioError(
            f"cannot read audio {path}: no such file",
            hint="relative paths resolve against the config's folder",
        )
    if path.is_dir():
        raise AudioError(f"cannot read audio {path}: it is a directory, not a file")
    if path.stat().st_size == 0:
        raise AudioError(
            f"cannot read audio {path}: the file is empty (0 bytes)",
            hint="an interrupted download or copy? copy the file again",
        )
    try:
        handle = sf.SoundFile(str(path))
    except sf.LibsndfileError as exc:
        raise AudioError(_open_error(path, exc.error_string), hint=CONVERT_HINT) from None
    except (RuntimeError, OSError, TypeError, ValueError) as exc:
        raise AudioError(_open_error(path, str(exc)), hint=CONVERT_HINT) from None
    rate, frames, channels = int(handle.samplerate), int(handle.frames), int(handle.channels)
    problem = None
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        problem = (
            f"absurd sample rate {rate} Hz in the header "
            f"(expected {MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} Hz); the file is corrupt"
        )
    elif frames <= 0:
        problem = "the header says it holds 0 frames"
    elif channels <= 0:
        problem = "the header says it has 0 channels"
    if problem is not None:
        handle.close()
        raise AudioError(f"cannot use audio {path}: {problem}")
    return handle, rate, frames, channels


def _decode_errors() -> tuple[type[BaseException], ...]:
    import soundfile as sf

    return (sf.LibsndfileError, RuntimeError, OSError, ValueError)


def _detail(exc: BaseException) -> str:
    return one_line(getattr(exc, "error_string", None) or str(exc))


def _check_span(start: int, stop: int, length: int, name: object, rate: int) -> tuple[int, int]:
    """A window ``[start, stop)`` of a clip of ``length`` samples, cut at its end."""
    if start < 0 or stop <= start:
        raise AudioError(
            f"cannot read a window [{start}, {stop}) of {name}: expected 0 <= start < stop"
        )
    if start >= length:
        raise AudioError(
            f"cannot read a window of {name}: it starts at {start / rate:.2f} s, past its end "
            f"({length / rate:.2f} s)"
        )
    return start, min(stop, length)


def _check_content(wave: torch.Tensor, what: str) -> None:
    """Finite and audible, per channel and after the mono mix. Input: (C, T)."""
    _check_finite(wave, what)
    _check_audible(wave, what)


def _check_finite(wave: torch.Tensor, what: str, where: str = "") -> None:
    """Input: (C, T). ``where`` (e.g. `` from 1.00 s to 2.00 s``) ends the message."""
    finite = torch.isfinite(wave)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise AudioError(f"{what}: it contains {bad} non-finite samples (NaN or inf){where}")


def _check_audible(wave: torch.Tensor, what: str, where: str = "", hint: str | None = None) -> None:
    """The loudest sample, and the mono mix the encoder hears, are above the silence
    threshold (one silent channel beside an audible one is fine). Input: (C, T), finite."""
    threshold = 10.0 ** (SILENCE_DBFS / 20.0)
    loudest = float(wave.abs().max())
    if loudest < threshold:
        level = "all samples are zero" if loudest == 0 else f"peak {peak_dbfs(wave):.1f} dBFS"
        raise AudioError(
            f"{what}: audio is silent{where} ({level}; the threshold is {SILENCE_DBFS:g} dBFS)",
            hint=hint or "the audio encoder needs audible sound",
        )
    if wave.shape[0] > 1:
        mixed = float(wave.mean(dim=0).abs().max())
        if mixed < threshold:
            raise AudioError(
                f"{what}: audio is silent{where} after mixing its {wave.shape[0]} channels to "
                "mono: the channels cancel each other (polarity-inverted stereo?)",
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


CONVERT_HINT = (
    "soundguide reads what libsndfile decodes (WAV, FLAC, OGG, MP3...); convert other "
    "formats first, e.g. ffmpeg -i input.m4a output.wav"
)


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
    detail = one_line(detail.strip()) or "unknown error"
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
