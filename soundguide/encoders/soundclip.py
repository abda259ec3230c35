"""SoundCLIP: the mel front end of the original code and its ResNet18 audio encoder.

The front end reproduces, in torch and on any device, the preprocessing the
released encoder was trained and used with (librosa 0.8 + OpenCV):

1. waveform at 44.1 kHz, mono (see :mod:`soundguide.encoders.audio`);
2. mel power spectrogram: n_fft 2048, hop 512, periodic Hann window, centred
   frames with *reflect* padding (librosa 0.8's default; 0.10 changed it to
   zeros), 128 Slaney mel bands with Slaney area normalization, 0 Hz to sr/2,
   power 2;
3. time axis to exactly 864 frames: longer clips are cropped (:data:`CropPolicy`),
   or cut into windows (:meth:`SoundCLIPFrontend.windows`);
4. ``power_to_db(S, ref=max, top_db=80) / 80 + 1`` of those 864 frames, per item,
   so values lie in [0, 1]; shorter clips are then placed on a zero canvas of
   864 frames (0 is the -80 dB floor) at the offset :data:`PadPolicy` gives:
   at its start (the editing code's), centred (the authors' zero-shot script)
   or at a random offset (the training loader's);
5. ``cv2.resize(S, (128, 512))``, bilinear with half-pixel centres and no
   antialiasing (OpenCV's dsize is (width, height): 128 x 864 becomes 512 x 128),
   then a plain *reshape* (not a transpose) to (1, 128, 512).

The dB reference (step 4) is the loudest bin of the 864-frame window that is
embedded, not of the whole clip as in the original code, which normalized
before cropping. For clips of at most 864 frames (10.03 s) the two are the
same; the encoder was trained on 10 s clips (862 frames), each normalized by
its own maximum, which is what a window now gets; and a window's input
depends only on the audio it covers, so a file's window is computed from that
window's audio alone. ``SoundCLIPFrontend(db_reference="clip")`` restores the
original order on in-memory clips (the authors' zero-shot protocol needs it).

Because frame ``f`` analyses samples ``[512 f - 1024, 512 f + 1024)`` only
(:func:`frame_span`), :func:`embed_audio` decodes from a file just the samples
of the window(s) it embeds, with reflect padding at the file's true edges: the
frames equal, up to float rounding, those of the whole file's spectrogram.

Shapes: waveform (B, T) -> spectrogram (B, 128, F) with F = 1 + T // 512 ->
encoder input (B, 1, 128, 512) -> embedding (B, 512).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from soundguide.core.checkpoints import (
    KnownWeights,
    check_state_dict,
    read_checkpoint,
    unwrap_state_dict,
)
from soundguide.core.errors import AudioError

SAMPLE_RATE = 44100
N_FFT = 2048
HOP_LENGTH = 512
N_MELS = 128
TOP_DB = 80.0
AMIN = 1e-10
NUM_FRAMES = 864
"""Frames per encoder input: 864 * 512 / 44100 = 10.03 s of audio."""
INPUT_SHAPE = (1, 128, 512)
EMBED_DIM = 512

PadPolicy = Literal["end", "center", "random"]
"""Where a clip shorter than 864 frames (``F`` frames) sits on the zero canvas:
``"end"`` pads at the end (frames ``[0, F)``; the editing code's, the default),
``"center"`` at ``j = (864 - F) // 2`` (the authors' zero-shot script),
``"random"`` at ``j = randint(0, 864 - F - 1)``, both ends included (the
training loader's; pass a ``torch.Generator`` for reproducibility)."""

DbReference = Literal["window", "clip"]
"""Whose loudest bin is 0 dB for a clip longer than 864 frames: the embedded
window's (the default, see the module docstring) or the whole clip's (the
original code's order: normalize, then crop). Equal for shorter clips."""

CropPolicy = Literal["start", "center", "random"]
"""Where a clip longer than 864 frames is cut: at the start (deterministic, the
default), in the centre, or at a random offset (what the original code did;
pass a ``torch.Generator`` for reproducibility). Whole-clip coverage is
:meth:`SoundCLIPFrontend.windows`."""

RESNET18_57 = KnownWeights(
    name="soundclip-resnet18-57",
    url="https://kr.object.ncloudstorage.com/cvpr2022/resnet18_57.pth",
    filename="resnet18_57.pth",
    license="CC BY-NC-SA 4.0",
    description="SoundCLIP ResNet18 audio encoder of Lee et al., CVPR 2022 (the released weights)",
)
"""The paper's released audio encoder (no published checksum: pinned on first download)."""


# -- the math -------------------------------------------------------------------------


def reflect_pad(wave: torch.Tensor, pad: int) -> torch.Tensor:
    """Reflect-pad the last axis like ``numpy.pad(mode="reflect")``, for any length.

    ``torch``'s reflect padding needs ``pad < T``; numpy (and so librosa) keeps
    reflecting back and forth when the signal is shorter than the pad, and
    repeats the single sample of a length-1 signal. This does the same, so
    clips shorter than one FFT window match the original code too.

    Input: (..., T), T >= 1. Output: (..., T + 2 * pad).
    """
    length = wave.shape[-1]
    if pad == 0:
        return wave
    if length > pad:
        shape = wave.shape
        padded = F.pad(wave.reshape(-1, 1, length), (pad, pad), mode="reflect")
        return padded.reshape(*shape[:-1], length + 2 * pad)
    if length == 1:
        return wave.expand(*wave.shape[:-1], 1 + 2 * pad)
    period = 2 * (length - 1)
    index = torch.arange(-pad, length + pad, device=wave.device).remainder(period)
    index = torch.where(index >= length, period - index, index)
    return wave[..., index]


def power_to_unit_db(power: torch.Tensor, top_db: float = TOP_DB) -> torch.Tensor:
    """``librosa.power_to_db(S, ref=np.max, top_db=80) / 80 + 1``, per batch item.

    Input: (B, M, F) power. Output: (B, M, F) in [0, 1]; the loudest bin is 1.
    """
    db = 10.0 * torch.log10(power.clamp(min=AMIN))
    ref = power.amax(dim=(-2, -1), keepdim=True).clamp(min=AMIN)
    db = db - 10.0 * torch.log10(ref)
    db = torch.maximum(db, db.amax(dim=(-2, -1), keepdim=True) - top_db)
    return db / top_db + 1.0


def fit_frames(
    spec: torch.Tensor,
    starts: Iterable[int] | None = None,
    num_frames: int = NUM_FRAMES,
    *,
    offsets: Iterable[int] | None = None,
) -> torch.Tensor:
    """Crop (at per-item ``starts``) or zero-pad to ``num_frames`` frames.

    A shorter spectrogram is placed at frames ``[j, j + F)`` of a zero canvas,
    ``j`` the item's entry of ``offsets`` (default 0: padding at the end; see
    :func:`pad_offsets`).

    Input: (B, M, F). Output: (B, M, num_frames).
    """
    frames = spec.shape[-1]
    if frames < num_frames:
        room = num_frames - frames
        offsets = [0] * spec.shape[0] if offsets is None else list(offsets)
        if any(not 0 <= j <= room for j in offsets):
            raise AudioError(
                f"pad offsets must lie in 0 .. {room} for {frames} frames, got {offsets}"
            )
        if all(j == offsets[0] for j in offsets):
            return F.pad(spec, (offsets[0], room - offsets[0]))
        return torch.stack([F.pad(s, (j, room - j)) for s, j in zip(spec, offsets, strict=True)])
    starts = [0] * spec.shape[0] if starts is None else list(starts)
    if all(s == starts[0] for s in starts):
        return spec[..., starts[0] : starts[0] + num_frames]
    return torch.stack([s[..., j : j + num_frames] for s, j in zip(spec, starts, strict=True)])


def spectrogram_to_input(spec: torch.Tensor) -> torch.Tensor:
    """``cv2.resize(S, (128, 512))`` then ``reshape(1, 128, 512)``, batched.

    OpenCV's INTER_LINEAR on float arrays is separable bilinear interpolation
    with half-pixel centres, edge clamping and no antialiasing, which is
    ``F.interpolate(mode="bilinear", align_corners=False, antialias=False)``.

    Input: (B, 128, 864). Output: (B, 1, 128, 512).
    """
    batch = spec.shape[0]
    resized = F.interpolate(
        spec.unsqueeze(1), size=(512, 128), mode="bilinear", align_corners=False, antialias=False
    )
    return resized.reshape(batch, *INPUT_SHAPE)


def window_to_input(
    power: torch.Tensor, *, pad: PadPolicy = "end", generator: torch.Generator | None = None
) -> torch.Tensor:
    """Steps 4 and 5 for one window: dB with the window's own reference, pad, resize.

    ``pad`` places a window shorter than 864 frames on the canvas
    (:func:`pad_offsets`; ``generator`` seeds ``"random"``).

    Input: (B, 128, F') mel power of at most 864 frames. Output: (B, 1, 128, 512).
    """
    if power.shape[-1] > NUM_FRAMES:
        raise AudioError(f"expected at most {NUM_FRAMES} frames, got {power.shape[-1]}")
    offsets = pad_offsets(power.shape[-1], power.shape[0], pad, generator=generator)
    return spectrogram_to_input(fit_frames(power_to_unit_db(power), offsets=offsets))


def frame_span(first: int, count: int, num_samples: int) -> tuple[int, int]:
    """Samples ``[lo, hi)`` of a clip of ``num_samples`` samples that frames
    ``first .. first + count - 1`` analyse.

    Frame ``f`` reads samples ``[512 f - 1024, 512 f + 1024)`` of the clip
    reflect-padded by 1024 at both ends; at an end, the padding reflects the
    1024 samples after the first (before the last) one, so those are included.
    """
    half = N_FFT // 2
    lo = max(0, first * HOP_LENGTH - half)
    hi = min(num_samples, (first + count - 1) * HOP_LENGTH + half)
    if hi == num_samples:  # the right edge's reflection reads [T - 1025, T - 1)
        lo = min(lo, max(0, num_samples - half - 1))
    if lo == 0:  # the left edge's reflection reads [1, 1025)
        hi = max(hi, min(num_samples, half + 1))
    return lo, hi


def window_starts(num_frames: int, hop_frames: int = NUM_FRAMES) -> list[int]:
    """Start frames of the 864-frame windows covering a spectrogram.

    Windows start every ``hop_frames`` (non-overlapping by default); when the
    last one stops short of the end, one more window ending exactly at the end
    is added, so every frame is covered and no window is padded. A spectrogram
    of at most 864 frames has the single window ``[0]`` (zero-padded).
    """
    if hop_frames < 1:
        raise AudioError(f"hop_frames must be >= 1, got {hop_frames}")
    if num_frames <= NUM_FRAMES:
        return [0]
    starts = list(range(0, num_frames - NUM_FRAMES + 1, hop_frames))
    if starts[-1] + NUM_FRAMES < num_frames:
        starts.append(num_frames - NUM_FRAMES)
    return starts


class SoundCLIPFrontend(nn.Module):
    """Waveform at 44.1 kHz to the SoundCLIP encoder input, as the original code computes it.

    Input: (B, T) or (T,) float waveform at 44.1 kHz, any T >= 1, computed in the
    dtype of the module's buffers (float32 unless moved with ``.to(dtype)``).
    Output: (B, 1, 128, 512) in [0, 1].

    The Hann window and the mel filter bank are buffers of the inner
    ``torchaudio`` MelSpectrogram, so ``.to(device)`` moves them. Frames are
    centred by padding with :func:`reflect_pad` (numpy semantics, so inputs
    shorter than half a window work and match librosa) and analysed uncentred.

    Args:
        crop: default :data:`CropPolicy` for clips longer than 864 frames.
        pad: default :data:`PadPolicy` for clips shorter than 864 frames.
        db_reference: :data:`DbReference`, for clips longer than 864 frames.
    """

    def __init__(
        self,
        crop: CropPolicy = "start",
        pad: PadPolicy = "end",
        db_reference: DbReference = "window",
    ) -> None:
        super().__init__()
        import torchaudio

        _check_crop(crop, windows=False)
        _check_pad(pad)
        if db_reference not in ("window", "clip"):
            raise AudioError(f"unknown dB reference {db_reference!r}; available: window, clip")
        self.crop = crop
        self.pad = pad
        self.db_reference = db_reference
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=SAMPLE_RATE,
            n_fft=N_FFT,
            win_length=N_FFT,
            hop_length=HOP_LENGTH,
            f_min=0.0,
            f_max=SAMPLE_RATE / 2,
            n_mels=N_MELS,
            window_fn=torch.hann_window,
            power=2.0,
            normalized=False,
            center=False,
            norm="slaney",
            mel_scale="slaney",
        )

    @staticmethod
    def num_frames(num_samples: int) -> int:
        """Spectrogram frames for a waveform of ``num_samples`` samples: 1 + T // 512."""
        return 1 + num_samples // HOP_LENGTH

    def power(self, wave: torch.Tensor) -> torch.Tensor:
        """Step 2: mel power spectrogram of the whole clip.

        Input: (B, T) or (T,). Output: (B, 128, 1 + T // 512).
        """
        wave = _check_batch(wave).to(self.mel.spectrogram.window.dtype)
        return self.mel(reflect_pad(wave, N_FFT // 2))

    def spectrogram(self, wave: torch.Tensor) -> torch.Tensor:
        """Mel power normalized by the whole clip's loudest bin (what curation stores).

        Input: (B, T) or (T,). Output: (B, 128, 1 + T // 512) in [0, 1].
        """
        return power_to_unit_db(self.power(wave))

    def window_power(
        self, segment: torch.Tensor, first: int, num_samples: int, count: int = NUM_FRAMES
    ) -> torch.Tensor:
        """Mel power of frames ``first .. first + count - 1`` of a clip, from its samples
        ``segment = clip[lo:hi]``, ``(lo, hi) = frame_span(first, count, num_samples)``.

        Reflect padding is applied only at the clip's true ends (``lo == 0``,
        ``hi == num_samples``), so the frames equal those of :meth:`power` on
        the whole clip. Input: (B, hi - lo) or (hi - lo,).
        Output: (B, 128, min(count, F - first)), F = 1 + num_samples // 512.
        """
        segment = _check_batch(segment).to(self.mel.spectrogram.window.dtype)
        frames = self.num_frames(num_samples)
        if not 0 <= first < frames or count < 1:
            raise AudioError(
                f"expected frames from {first} (count {count}) within 0 .. {frames - 1}"
            )
        lo, hi = frame_span(first, count, num_samples)
        if segment.shape[-1] != hi - lo:
            raise AudioError(
                f"expected the {hi - lo} samples [{lo}, {hi}) of the clip for frames "
                f"{first} .. {first + count - 1}, got {segment.shape[-1]}"
            )
        half = N_FFT // 2
        padded = reflect_pad(segment, half)
        padded = padded[
            ..., (half if lo > 0 else 0) : padded.shape[-1] - (half if hi < num_samples else 0)
        ]
        # index 0 of `padded` is index `origin` of the whole clip reflect-padded
        origin = 0 if lo == 0 else lo + half
        count = min(count, frames - first)
        begin = first * HOP_LENGTH - origin
        return self.mel(padded[..., begin : begin + (count - 1) * HOP_LENGTH + N_FFT])

    def forward(
        self,
        wave: torch.Tensor,
        *,
        crop: CropPolicy | None = None,
        pad: PadPolicy | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Input: (B, T) or (T,). Output: (B, 1, 128, 512).

        ``crop`` and ``pad`` override the default policies; ``generator`` seeds
        ``"random"`` (one offset per batch item, drawn on the generator's
        device). The dB reference is the loudest bin of each item's 864-frame
        crop, or of the whole clip with ``db_reference="clip"``.
        """
        crop = self.crop if crop is None else crop
        pad = self.pad if pad is None else pad
        _check_crop(crop, windows=False)
        _check_pad(pad)
        power = self.power(wave)
        frames = power.shape[-1]
        if frames <= NUM_FRAMES:
            return window_to_input(power, pad=pad, generator=generator)
        starts = crop_starts(frames, power.shape[0], crop, generator=generator)
        if self.db_reference == "clip":
            return spectrogram_to_input(fit_frames(power_to_unit_db(power), starts))
        return window_to_input(fit_frames(power, starts))

    def windows(
        self,
        wave: torch.Tensor,
        *,
        hop_frames: int = NUM_FRAMES,
        pad: PadPolicy | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Every 864-frame window of the clip (see :func:`window_starts`).

        Input: (B, T) or (T,). Output: (B, W, 1, 128, 512), W = ``len(window_starts(F, hop_frames))``.
        Each window has its own dB reference (its loudest bin), as a crop does,
        so it is the crop of the clip at that start; with ``db_reference="clip"``
        every window shares the whole clip's. A clip shorter than one window is
        placed on the canvas by ``pad`` (default: the module's policy).
        """
        pad = self.pad if pad is None else pad
        _check_pad(pad)
        power = self.power(wave)
        frames = power.shape[-1]
        if frames <= NUM_FRAMES:
            return window_to_input(power, pad=pad, generator=generator).unsqueeze(1)
        starts = window_starts(frames, hop_frames)
        if self.db_reference == "clip":
            unit = power_to_unit_db(power)
            crops = [spectrogram_to_input(unit[..., s : s + NUM_FRAMES]) for s in starts]
        else:
            crops = [window_to_input(power[..., s : s + NUM_FRAMES]) for s in starts]
        return torch.stack(crops, dim=1)


def crop_starts(
    num_frames: int,
    batch: int,
    crop: CropPolicy,
    *,
    generator: torch.Generator | None = None,
) -> list[int]:
    """Start frame per batch item for ``crop`` on a spectrogram of ``num_frames`` frames."""
    excess = num_frames - NUM_FRAMES
    if excess <= 0 or crop == "start":
        return [0] * batch
    if crop == "center":
        return [excess // 2] * batch
    device = generator.device if generator is not None else "cpu"
    drawn = torch.randint(0, excess + 1, (batch,), generator=generator, device=device)
    return [int(j) for j in drawn.tolist()]


def pad_offsets(
    num_frames: int,
    batch: int,
    pad: PadPolicy,
    *,
    generator: torch.Generator | None = None,
) -> list[int]:
    """Canvas offset per batch item for ``pad`` on a spectrogram of ``num_frames`` frames.

    0 for ``"end"`` and for spectrograms of at least 864 frames (nothing to
    pad); ``(864 - F) // 2`` for ``"center"``; for ``"random"`` a draw from
    ``0 .. 864 - F - 1`` (both included, as Python's ``random.randint(0, 864 - F - 1)``
    in the training loader), so a clip never ends exactly at the canvas's end.
    """
    room = NUM_FRAMES - num_frames
    if room <= 0 or pad == "end":
        return [0] * batch
    if pad == "center":
        return [room // 2] * batch
    device = generator.device if generator is not None else "cpu"
    drawn = torch.randint(0, room, (batch,), generator=generator, device=device)
    return [int(j) for j in drawn.tolist()]


def _check_pad(pad: str) -> None:
    if pad not in ("end", "center", "random"):
        raise AudioError(f"unknown pad policy {pad!r}; available: end, center, random")


def _check_crop(crop: str, *, windows: bool) -> None:
    allowed = ("start", "center", "random", "windows") if windows else ("start", "center", "random")
    if crop not in allowed:
        raise AudioError(f"unknown crop policy {crop!r}; available: {', '.join(allowed)}")


def _check_batch(wave: torch.Tensor) -> torch.Tensor:
    if not isinstance(wave, torch.Tensor) or not wave.is_floating_point():
        got = wave.dtype if isinstance(wave, torch.Tensor) else type(wave).__name__
        raise AudioError(f"expected a floating-point waveform tensor, got {got}")
    if wave.dim() == 1:
        wave = wave.unsqueeze(0)
    if wave.dim() != 2 or wave.shape[-1] == 0 or wave.shape[0] == 0:
        raise AudioError(
            f"expected a waveform of shape (B, T) or (T,) with T >= 1, got {tuple(wave.shape)}"
        )
    return wave


# -- the encoder ----------------------------------------------------------------------


class SoundCLIPEncoder(nn.Module):
    """The SoundCLIP audio encoder: a 3x3 convolution to 3 channels, then
    torchvision's ResNet18 with an ``embed_dim``-way ``fc``.

    Input: (B, 1, 128, 512) from :class:`SoundCLIPFrontend`.
    Output: (B, embed_dim) embeddings in the CLIP space, not normalized.
    """

    def __init__(self, embed_dim: int = EMBED_DIM) -> None:
        super().__init__()
        from torchvision.models import resnet18

        # `conv` and `feature_extractor` are the key names of the released checkpoint.
        self.conv = nn.Conv2d(1, 3, kernel_size=3)
        self.feature_extractor = resnet18(weights=None, num_classes=embed_dim)
        self.embed_dim = embed_dim

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        if spec.dim() != 4 or tuple(spec.shape[1:]) != INPUT_SHAPE:
            raise AudioError(
                f"SoundCLIP expects spectrograms of shape (B, 1, 128, 512), got {tuple(spec.shape)}"
            )
        return self.feature_extractor(self.conv(spec))


def soundclip_state_dict(obj: Any, source: str = "<state dict>") -> dict[str, torch.Tensor]:
    """The encoder's state dict inside a loaded checkpoint.

    Unwraps ``{"state_dict": ...}``, ``{"model": ...}`` (and similar) containers
    and strips a ``module.`` prefix (DataParallel / DDP). Raises
    :class:`CheckpointError` when no tensor mapping is found.
    """
    return unwrap_state_dict(
        obj,
        source,
        containers=("state_dict", "model_state_dict", "model", "audio_encoder", "net"),
        prefixes=("module.", "audio_encoder.", "encoder."),
    )


def load_soundclip(
    path_or_state_dict: str | os.PathLike[str] | Mapping[str, Any],
    *,
    trust: bool = False,
    map_location: Any = "cpu",
) -> SoundCLIPEncoder:
    """Build a :class:`SoundCLIPEncoder` from a checkpoint file or a state dict.

    Files are read with :func:`soundguide.core.checkpoints.load_checkpoint`
    (no pickled code unless ``trust``). Loading is strict: a checkpoint with
    missing, unexpected or wrongly shaped keys raises one
    :class:`CheckpointError` line naming them. The embedding size follows
    ``feature_extractor.fc``. The model is built on the meta device and the
    weights copied into its CPU memory (no random initialization, the global
    RNG untouched). Returns the encoder in eval mode, on the CPU.
    """
    source, obj = read_checkpoint(path_or_state_dict, trust=trust, map_location=map_location)
    state = soundclip_state_dict(obj, source)
    fc = state.get("feature_extractor.fc.weight")
    embed_dim = fc.shape[0] if isinstance(fc, torch.Tensor) and fc.dim() == 2 else EMBED_DIM
    with torch.device("meta"):
        model = SoundCLIPEncoder(embed_dim=embed_dim)
    expected = model.state_dict()
    # Counters of batch-norm updates do not affect eval; older exports drop them.
    for key in expected:
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros((), dtype=torch.long)
    check_state_dict(
        expected,
        state,
        source=source,
        what="the SoundCLIP ResNet18 encoder",
        hint="expected the keys of resnet18_57.pth (conv.*, feature_extractor.*)",
    )
    model.to_empty(device="cpu")
    model.load_state_dict(state, strict=True)
    return model.eval()


# -- embedding audio -------------------------------------------------------------------


@torch.no_grad()
def embed_audio(
    encoder: SoundCLIPEncoder,
    audio: str | os.PathLike[str] | torch.Tensor | np.ndarray,
    *,
    sample_rate: int = SAMPLE_RATE,
    frontend: SoundCLIPFrontend | None = None,
    crop: CropPolicy | Literal["windows"] = "start",
    pad: PadPolicy = "end",
    generator: torch.Generator | None = None,
    hop_frames: int = NUM_FRAMES,
    max_seconds: float = 600.0,
    batch_size: int = 16,
) -> torch.Tensor:
    """Embed one clip: a file path, or a waveform (T,) / (C, T) at ``sample_rate``.

    A file is never decoded whole: its length comes from the header and only
    the samples of the embedded window(s) are read (:class:`AudioFile`), so
    memory does not depend on the file's length. Arrays are checked, mixed to
    mono and resampled to 44.1 kHz first (:func:`prepare_waveform`), then cut
    the same way. For a clip of F frames:

    - ``"start"``, ``"center"``, ``"random"``: the one 864-frame window at
      :func:`crop_starts` (``generator`` seeds ``"random"``), embedded and
      returned unnormalized; any length. A silent window is an error naming
      its time range.
    - ``"windows"``: the windows of :func:`window_starts` (``hop_frames``),
      read and embedded one at a time (``batch_size`` spectrograms are batched
      through the encoder); the result is the mean of the L2-normalized
      embeddings. Silent windows are left out; clips longer than
      ``max_seconds`` are refused (the time grows with the length).

    Each window is normalized by its own loudest bin (see the module docstring).
    A clip shorter than 864 frames is placed on the canvas by ``pad``
    (:func:`pad_offsets`; ``generator`` seeds ``"random"``).

    Output: (embed_dim,) float32 on the encoder's device, without gradient.
    """
    from soundguide.encoders.audio import AudioFile, InMemoryAudio, prepare_waveform

    _check_crop(crop, windows=True)
    _check_pad(pad)
    if batch_size < 1:
        raise AudioError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(audio, str | os.PathLike):
        source = AudioFile(audio, SAMPLE_RATE)
        name = f"audio {source.path}"
    else:
        wave = prepare_waveform(audio, sample_rate, SAMPLE_RATE, name="audio waveform")
        source = InMemoryAudio(wave, SAMPLE_RATE, name="audio waveform")
        name = "audio waveform"
    param = next(encoder.parameters())
    if frontend is None:
        frontend = SoundCLIPFrontend()
    frontend = frontend.to(param.device)
    with source:
        total = source.num_samples
        frames = SoundCLIPFrontend.num_frames(total)
        if crop != "windows":
            (first,) = crop_starts(frames, 1, crop, generator=generator)
            lo, hi = frame_span(first, NUM_FRAMES, total)
            others = [c for c in ("start", "center", "random") if c != crop]
            hint = (
                "the audio encoder needs audible sound; other parts of the file may have some: "
                f'crop = "{others[0]}", "{others[1]}" or "windows"'
                if frames > NUM_FRAMES
                else None
            )
            segment = source.read(lo, hi, silence_hint=hint).to(param.device)
            power = frontend.window_power(segment, first, total)
            spec = window_to_input(power, pad=pad, generator=generator)
            return encoder(spec.to(param.dtype))[0].float()

        if source.seconds > max_seconds:
            raise AudioError(
                f"cannot use {name}: it is {source.seconds:.1f} s long, more than "
                f'max_seconds={max_seconds:g} for crop = "windows"',
                hint='crop = "start", "center" or "random" embeds one 10 s window of a clip '
                "of any length; or raise max_seconds",
            )
        starts = window_starts(frames, hop_frames)
        embeddings: list[torch.Tensor] = []
        batch: list[torch.Tensor] = []
        for first in starts:
            lo, hi = frame_span(first, NUM_FRAMES, total)
            segment = source.read(lo, hi, allow_silence=True).to(param.device)
            if _audible(segment):
                power = frontend.window_power(segment, first, total)
                batch.append(window_to_input(power, pad=pad, generator=generator))
            del segment  # one window's samples at a time
            if len(batch) == batch_size or (batch and first == starts[-1]):
                out = encoder(torch.cat(batch).to(param.dtype)).float()
                embeddings.append(F.normalize(out, dim=-1))
                batch = []
    if not embeddings:
        raise AudioError(
            f"cannot use {name}: audio is silent in all {len(starts)} of its 10 s windows",
            hint="the audio encoder needs audible sound",
        )
    return torch.cat(embeddings).mean(dim=0)


def _audible(wave: torch.Tensor) -> bool:
    """The silence test of :mod:`soundguide.encoders.audio` on a mono window."""
    from soundguide.encoders.audio import SILENCE_DBFS

    return bool(wave.abs().max() >= 10.0 ** (SILENCE_DBFS / 20.0))
