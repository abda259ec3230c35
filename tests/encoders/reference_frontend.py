"""An independent librosa + OpenCV reference of the original code's mel front end.

This is the preprocessing the released SoundCLIP encoder was used with
(librosa 0.8.1, opencv-python 4.5), written from its documented behaviour:
``melspectrogram`` with librosa 0.8's default ``pad_mode="reflect"`` (librosa
0.10 changed the default to zeros, so it is passed explicitly here),
``power_to_db(ref=np.max) / 80 + 1``, crop or zero-pad to 864 frames (the
padded array is float64, the cropped one float32, as in the original), then
``cv2.resize(S, (128, 512))`` and a plain reshape to (1, 128, 512).

:func:`authors_zeroshot_input` is the authors' posted zero-shot script, the
same steps with a centred crop and centred zero padding.

Tests only; the package never imports librosa or OpenCV.
"""

from __future__ import annotations

import warnings

import cv2
import librosa
import numpy as np

N_MELS = 128
TIME_LENGTH = 864
RESIZE_RESOLUTION = 512


def reference_spectrogram(y: np.ndarray, sr: int = 44100) -> np.ndarray:
    """Input: (T,) float32 at 44.1 kHz. Output: (128, 1 + T // 512) in [0, 1]."""
    with warnings.catch_warnings():
        # librosa warns when n_fft exceeds a very short input; it still computes.
        warnings.simplefilter("ignore", UserWarning)
        spec = librosa.feature.melspectrogram(
            y=y, sr=sr, n_fft=2048, hop_length=512, n_mels=N_MELS, pad_mode="reflect"
        )
    return librosa.power_to_db(spec, ref=np.max) / 80.0 + 1


def reference_frontend(
    y: np.ndarray, sr: int = 44100, start: int = 0, offset: int = 0
) -> np.ndarray:
    """Input: (T,) float32 at 44.1 kHz. Output: (1, 128, 512) as the original computes it.

    ``start`` is the crop offset the original drew with ``random.randint``;
    ``offset`` is where a shorter clip sits on the zero canvas (0 in the
    editing code, ``randint(0, 864 - w - 1)`` in the training loader).
    """
    spec = reference_spectrogram(y, sr)
    _, width = spec.shape
    if width >= TIME_LENGTH:
        spec = spec[:, start : start + TIME_LENGTH]
    else:
        zero = np.zeros((N_MELS, TIME_LENGTH))
        zero[:, offset : offset + width] = spec[:, :width]
        spec = zero
    spec = cv2.resize(spec, (N_MELS, RESIZE_RESOLUTION))
    return spec.reshape((1, N_MELS, RESIZE_RESOLUTION))


def authors_zeroshot_input(filepath: str) -> np.ndarray:
    """The original authors' zero-shot preprocessing, transcribed from their answer to
    issue #11 of kuai-lab/sound-guided-semantic-image-manipulation.

    One clip file -> the (1, 128, 512) array their encoder received. Their
    librosa (0.8) padded frames by reflection by default; librosa 0.10 pads
    with zeros, so ``pad_mode="reflect"`` is passed here. Their excerpt stops
    at ``np.array([audio_inputs])`` (1, 512, 128); the reshape to the encoder's
    (1, 128, 512) is the editing code's.
    """
    n_mels, time_length, resize_resolution = N_MELS, TIME_LENGTH, RESIZE_RESOLUTION
    y, sr = librosa.load(filepath, sr=44100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        audio_inputs = librosa.feature.melspectrogram(y=y, sr=sr, n_mels=n_mels, pad_mode="reflect")
    audio_inputs = librosa.power_to_db(audio_inputs, ref=np.max) / 80.0 + 1
    zero = np.zeros((n_mels, time_length))

    h, w = audio_inputs.shape
    if w >= time_length:
        j = (w - time_length) // 2
        audio_inputs = audio_inputs[:, j : j + time_length]
    else:
        j = (time_length - w) // 2
        zero[:, j : j + w] = audio_inputs[:, :w]
        audio_inputs = zero

    audio_inputs = cv2.resize(audio_inputs, (n_mels, resize_resolution))
    audio_inputs = np.array([audio_inputs])
    return audio_inputs.reshape((1, n_mels, resize_resolution))
