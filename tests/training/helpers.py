"""A tiny synthetic dataset (tones, chirps, noise bursts, whistles) and tiny models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

SR = 44100
CLASSES = ("tone", "chirp", "noise_burst", "whistle")


def clip(kind: str, seed: int, seconds: float = 1.0) -> np.ndarray:
    """One clip of class ``kind``, varied by ``seed``. Output: (T,) float32 at 44.1 kHz."""
    rng = np.random.default_rng(seed)
    n = int(SR * seconds)
    t = np.arange(n) / SR
    if kind == "tone":
        y = 0.5 * np.sin(2 * np.pi * rng.uniform(300, 900) * t)
    elif kind == "chirp":
        f0 = rng.uniform(100, 300)
        y = 0.5 * np.sin(2 * np.pi * (f0 * t + rng.uniform(4000, 8000) * t**2))
    elif kind == "noise_burst":
        y = 0.3 * rng.standard_normal(n) * (np.sin(2 * np.pi * rng.uniform(2, 4) * t) > 0)
    elif kind == "whistle":
        y = 0.3 * np.sin(2 * np.pi * rng.uniform(6000, 9000) * t)
    else:
        raise ValueError(kind)
    return y.astype(np.float32)


def write_class_folders(root: Path, per_class: int = 8, seconds: float = 1.0) -> Path:
    """``root/<class>/<class>_<i>.wav`` for every class in :data:`CLASSES`."""
    for c, kind in enumerate(CLASSES):
        folder = root / kind
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            sf.write(folder / f"{kind}_{i}.wav", clip(kind, 100 * c + i, seconds), SR)
    return root


def write_bad_files(folder: Path) -> dict[str, Path]:
    """A corrupt, a silent and a zero-length WAV in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    corrupt = folder / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x01\x02\x03 this is not a wave file at all" * 8)
    silent = folder / "silent.wav"
    sf.write(silent, np.zeros(SR // 2, np.float32), SR)
    empty = folder / "empty.wav"
    empty.write_bytes(b"")
    return {"corrupt": corrupt, "silent": silent, "empty": empty}


def tiny_clip_file(path: Path) -> Path:
    """The tiny random CLIP of the encoder tests, saved as a state dict file."""
    from tests.factories import save_tiny_clip

    return save_tiny_clip(path)
