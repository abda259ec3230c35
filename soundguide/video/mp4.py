"""MP4 writing with PyAV (whose wheels ship FFmpeg): H.264 in yuv420p, the recording's audio as AAC.

Frames are encoded as they are made (a chunk at a time) and the audio is
muxed alongside up to the time of the last frame, so memory follows a chunk,
not the video, and a stopped run's partial file plays with its sound in sync.
The file is written under a temporary name in the output folder and renamed
into place when closed, so a crash never leaves a truncated ``video.mp4``.

PyAV is an optional extra (``pip install 'soundguide[video]'``); importing
this module does not import it.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from soundguide.core.errors import OutputError

AUDIO_BLOCK = 1 << 16
"""Audio samples read, converted and encoded at a time."""


def import_av():
    """PyAV, or a one-line error naming the extra that installs it."""
    try:
        import av
    except ImportError:
        raise OutputError(
            "writing MP4 videos needs PyAV, which is not installed",
            hint="pip install 'soundguide[video]'",
        ) from None
    return av


def frame_rate(fps: float) -> Fraction:
    """The stream's rate as a fraction (29.97 -> 30000/1001)."""
    return Fraction(fps).limit_denominator(1001)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(n, 3, H, W) in [-1, 1] -> (n, H', W', 3) uint8, H' and W' padded to even sizes
    (yuv420p needs them) by repeating the last row / column."""
    if not torch.isfinite(images).all():
        raise OutputError("refusing to encode a video frame with NaN or infinite values")
    array = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    h, w = array.shape[-2:]
    if h % 2 or w % 2:
        array = torch.nn.functional.pad(array.float(), (0, w % 2, 0, h % 2), mode="replicate")
        array = array.to(torch.uint8)
    return array.permute(0, 2, 3, 1).contiguous().numpy()


class Mp4Writer:
    """``add(images)`` chunk by chunk, then ``close()`` (or ``close(complete=False)`` for a
    partial video: the audio stops at the last frame's end)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        fps: float,
        audio: str | os.PathLike[str],
        *,
        crf: int = 18,
    ) -> None:
        import soundfile as sf

        from soundguide.core.files import create_temporary

        self.av = import_av()
        self.path = Path(path)
        self.fps = fps
        self.crf = crf
        fd, self.tmp = create_temporary(self.path.parent, self.path.name)
        os.close(fd)
        self.sound = sf.SoundFile(str(audio))
        self.channels = min(self.sound.channels, 2)
        self.container = self.av.open(str(self.tmp), "w", format="mp4")
        self.video = None
        self.audio = self.container.add_stream("aac", rate=self.sound.samplerate)
        self.audio.layout = "stereo" if self.channels == 2 else "mono"
        self.frames = 0
        self.samples = 0

    def _video_stream(self, height: int, width: int):
        stream = self.container.add_stream("libx264", rate=frame_rate(self.fps))
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(self.crf)}
        return stream

    def add(self, images: torch.Tensor) -> None:
        """Encode (n, 3, H, W) images in [-1, 1], then the audio up to their end."""
        arrays = to_uint8(images)
        if self.video is None:
            self.video = self._video_stream(*arrays.shape[1:3])
        for array in arrays:
            frame = self.av.VideoFrame.from_ndarray(array, format="rgb24")
            frame.pts = self.frames
            self.container.mux(self.video.encode(frame))
            self.frames += 1
        self._audio_until(round(self.frames / self.fps * self.sound.samplerate))

    def _audio_until(self, stop: int | None) -> None:
        rate = self.sound.samplerate
        layout = "stereo" if self.channels == 2 else "mono"
        while stop is None or self.samples < stop:
            want = AUDIO_BLOCK if stop is None else min(AUDIO_BLOCK, stop - self.samples)
            data = self.sound.read(want, dtype="float32", always_2d=True)
            if data.shape[0] == 0:
                break
            if data.shape[1] > 2:
                data = data.mean(axis=1, keepdims=True)
            planar = np.ascontiguousarray(data.T[: self.channels])
            frame = self.av.AudioFrame.from_ndarray(planar, format="fltp", layout=layout)
            frame.sample_rate = rate
            frame.pts = self.samples
            frame.time_base = Fraction(1, rate)
            self.container.mux(self.audio.encode(frame))
            self.samples += data.shape[0]

    def close(self, *, complete: bool = True) -> Path | None:
        """Flush, close and rename into place; returns the path (None: no frame was added,
        nothing kept). ``complete``: mux the rest of the recording too."""
        try:
            if self.video is None:
                self.container.close()
                self.tmp.unlink(missing_ok=True)
                return None
            if complete:
                self._audio_until(None)
            self.container.mux(self.video.encode(None))
            self.container.mux(self.audio.encode(None))
            self.container.close()
            os.replace(self.tmp, self.path)
            return self.path
        finally:
            self.sound.close()
            self.tmp.unlink(missing_ok=True)

    def abort(self) -> None:
        """Close and remove the temporary file."""
        try:
            self.container.close()
        except Exception:  # noqa: BLE001 - a broken container is being thrown away
            pass
        self.sound.close()
        self.tmp.unlink(missing_ok=True)
