"""Tiny datasets laid out exactly like ESC-50 and UrbanSound8K, and an oracle audio embedder.

Every clip is a pure tone. The test decides, per clip, which class's tone it
carries (usually its own class's, sometimes another's on purpose), so the
oracle embedder, which finds the tone's frequency and returns that class's
text embedding, has an accuracy known in advance.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from soundguide.encoders.clip import CLIPEncoder
from tests.factories import save_random_soundclip, save_tiny_clip, tiny_clip

ESC50_CLASSES = {0: "dog", 12: "crackling_fire", 14: "chirping_birds", 38: "clock_tick"}
US8K_CLASSES = {0: "air_conditioner", 1: "car_horn", 3: "dog_bark", 9: "street_music"}
TONES = (300.0, 600.0, 1200.0, 2400.0)
"""The tone of class index i (classes sorted by official id); below 4 kHz so 8 kHz files hold it."""

# ESC-50: fold 1 all right, fold 2 one wrong, fold 3 two wrong, folds 4 and 5 one wrong:
# 5 of 20 clips wrong -> exactly 75 %.
ESC50_WRONG = {(2, 1): 3, (3, 0): 2, (3, 3): 0, (4, 3): 0, (5, 3): 2}
# UrbanSound8K: 10 of 40 wrong -> 75 %; class 3 always wrong (the oracle confuses it with 0).
US8K_WRONG = {**{(f, 3): 0 for f in range(1, 11)}}

US8K_FORMATS = (
    (44100, "PCM_16", 1),
    (48000, "PCM_24", 2),
    (22050, "PCM_U8", 1),
    (8000, "PCM_16", 1),
    (96000, "FLOAT", 2),
    (11025, "PCM_32", 1),
    (16000, "PCM_16", 2),
)
"""(rate, subtype, channels) cycled over the UrbanSound8K clips, as the real set mixes them."""


def write_tone(
    path: Path,
    freq: float,
    *,
    seconds: float = 0.5,
    rate: int = 44100,
    subtype: str = "PCM_16",
    channels: int = 1,
) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.4 * np.sin(2 * np.pi * freq * t)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.stack([wave] * channels, axis=1), rate, subtype=subtype)
    return path


@dataclass
class Layout:
    """A written tiny dataset and what the oracle will answer for each CSV row."""

    root: Path
    csv_path: Path
    rows: list[dict[str, str]]
    labels: list[int]
    """Class index of each row (its official class)."""
    tone_class: list[int]
    """Class index whose tone each row's audio carries (what the oracle predicts)."""
    folds: list[int]

    @property
    def expected_top1(self) -> float:
        return float(np.mean([a == b for a, b in zip(self.labels, self.tone_class, strict=True)]))

    def expected_fold_top1(self) -> dict[int, float]:
        out = {}
        for fold in sorted(set(self.folds)):
            hits = [
                a == b
                for a, b, f in zip(self.labels, self.tone_class, self.folds, strict=True)
                if f == fold
            ]
            out[fold] = float(np.mean(hits))
        return out


def _wrong(fold: int, index: int, wrong: dict[tuple[int, int], int]) -> int:
    return wrong.get((fold, index), index)


def write_esc50(
    root: Path,
    *,
    wrong: dict[tuple[int, int], int] | None = None,
    per_fold: int = 1,
) -> Layout:
    """ESC-50 layout: ``audio/*.wav`` (5 s in the real set; 0.5 s here) and ``meta/esc50.csv``.

    ``wrong[(fold, class_index)] = other`` gives that fold's clips of the class the
    tone of ``other``. Rows are written fold-interleaved, not sorted, to catch
    code that assumes CSV order equals fold order.
    """
    wrong = wrong or {}
    ids = sorted(ESC50_CLASSES)
    rows, labels, tones, folds = [], [], [], []
    for take in range(per_fold):
        for index, target in enumerate(ids):
            for fold in (3, 1, 5, 2, 4):
                src = 1000 + 10 * target + fold
                name = f"{fold}-{src}-{'ABCDE'[take]}-{target}.wav"
                tone = _wrong(fold, index, wrong)
                write_tone(root / "audio" / name, TONES[tone])
                rows.append(
                    {
                        "filename": name,
                        "fold": str(fold),
                        "target": str(target),
                        "category": ESC50_CLASSES[target],
                        "esc10": "True" if target == 0 else "False",
                        "src_file": str(src),
                        "take": "ABCDE"[take],
                    }
                )
                labels.append(index)
                tones.append(tone)
                folds.append(fold)
    csv_path = root / "meta" / "esc50.csv"
    _write_csv(csv_path, rows)
    return Layout(root, csv_path, rows, labels, tones, folds)


def write_us8k(root: Path, *, wrong: dict[tuple[int, int], int] | None = None) -> Layout:
    """UrbanSound8K layout: ``audio/foldN/*.wav`` of mixed rate, depth and channels,
    ``metadata/UrbanSound8K.csv``; 10 folds, one clip per class per fold, 0.4-0.7 s."""
    wrong = wrong or {}
    ids = sorted(US8K_CLASSES)
    rows, labels, tones, folds = [], [], [], []
    n = 0
    for fold in range(1, 11):
        for index, class_id in enumerate(ids):
            rate, subtype, channels = US8K_FORMATS[n % len(US8K_FORMATS)]
            seconds = 0.4 + 0.1 * (n % 4)
            fs_id = 5000 + n
            name = f"{fs_id}-{class_id}-0-{n % 3}.wav"
            tone = _wrong(fold, index, wrong)
            write_tone(
                root / "audio" / f"fold{fold}" / name,
                TONES[tone],
                seconds=seconds,
                rate=rate,
                subtype=subtype,
                channels=channels,
            )
            rows.append(
                {
                    "slice_file_name": name,
                    "fsID": str(fs_id),
                    "start": "0.0",
                    "end": f"{seconds:.1f}",
                    "salience": str(1 + n % 2),
                    "fold": str(fold),
                    "classID": str(class_id),
                    "class": US8K_CLASSES[class_id],
                }
            )
            labels.append(index)
            tones.append(tone)
            folds.append(fold)
            n += 1
    csv_path = root / "metadata" / "UrbanSound8K.csv"
    _write_csv(csv_path, rows)
    return Layout(root, csv_path, rows, labels, tones, folds)


def _write_csv(path: Path, rows: Sequence[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


class OracleEmbedder:
    """Finds a clip's tone and returns the embedding of the class that tone belongs to.

    ``table`` (K, D) holds one embedding per class (the test passes the tiny
    CLIP's class embeddings, so zero-shot picks exactly the tone's class).
    Counts the clips it embeds and the calls, to check batching and caching.
    """

    sample_rate = 16000

    def __init__(self, table: torch.Tensor, tones: Sequence[float] = TONES, tag: str = "") -> None:
        self.table = table
        self.tones = torch.tensor(tones)
        self.identity = f"oracle:{tag}:{float(table.sum()):.6f}"
        self.clips = 0
        self.calls = 0
        self.batch_sizes: list[int] = []

    def tone_index(self, wave: torch.Tensor) -> int:
        spectrum = torch.fft.rfft(wave.double() * torch.hann_window(len(wave), dtype=torch.float64))
        peak = float(spectrum.abs().argmax()) * self.sample_rate / len(wave)
        return int((self.tones - peak).abs().argmin())

    def embed_audio_batch(self, waves: list[torch.Tensor]) -> torch.Tensor:
        self.calls += 1
        self.clips += len(waves)
        self.batch_sizes.append(len(waves))
        return torch.stack([self.table[self.tone_index(w)] for w in waves])


@pytest.fixture(scope="session")
def text_encoder() -> CLIPEncoder:
    return CLIPEncoder(tiny_clip(seed=0))


@pytest.fixture(scope="session")
def tiny_clip_file(tmp_path_factory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny_clip.pt", seed=0)


@pytest.fixture(scope="session")
def soundclip_file(tmp_path_factory) -> Path:
    """Random SoundCLIP ResNet18 weights with a 32-dim fc (the tiny CLIP's space)."""
    path = tmp_path_factory.mktemp("soundclip") / "soundclip.pt"
    return save_random_soundclip(path, embed_dim=32, seed=1)
