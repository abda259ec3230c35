"""How many clips per second the zero-shot / linear-probe evaluation embeds.

Uses the real SoundCLIP encoder (ResNet18, 512-d output) with random weights —
speed does not depend on the weights — on generated audio, and prints clips/s
for:

1. ``model``: :meth:`SoundCLIPEmbedder.embed_audio_batch` on waveforms already
   in memory (front end + encoder), for batch sizes 1, 8 and 32 and the crop
   policies ``start`` and ``windows``. ESC-50 clips are 5 s, shorter than the
   encoder's 10.03 s window, so ``windows`` is one window per clip there; the
   ``windows`` rows on ``--long-seconds`` clips show what several windows cost;
2. ``pipeline``: :func:`embed_dataset` on an ESC-50-like folder of 5 s
   44.1 kHz 16-bit WAV files written to a temporary directory: reading and
   decoding (``--workers`` threads ahead), front end and encoder, cache off.

Each measurement embeds ``--clips`` clips after one untimed warm-up batch and
reports the best of ``--repeats`` runs (the machine may be shared).

Usage::

    python benchmarks/zeroshot_speed.py [--device cpu|cuda] [--threads N] [--clips 64]
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from soundguide.encoders.soundclip import SAMPLE_RATE, SoundCLIPEncoder  # noqa: E402
from soundguide.evaluation import SoundCLIPEmbedder, embed_dataset, load_esc50  # noqa: E402


def clip_wave(seconds: float, seed: int) -> torch.Tensor:
    """A tone sweep plus noise: something with structure at every frequency."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    f0 = rng.uniform(100, 2000)
    wave = 0.3 * np.sin(2 * np.pi * f0 * t * (1 + 0.2 * t)) + 0.05 * rng.standard_normal(len(t))
    return torch.tensor(wave, dtype=torch.float32)


def best_rate(run, clips: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return clips / min(times)


def model_rate(
    embedder: SoundCLIPEmbedder,
    waves: list[torch.Tensor],
    batch: int,
    repeats: int,
    device: torch.device,
) -> float:
    def run() -> None:
        for i in range(0, len(waves), batch):
            embedder.embed_audio_batch(waves[i : i + batch])
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    embedder.embed_audio_batch(waves[:batch])  # warm-up
    return best_rate(run, len(waves), repeats)


def write_esc50_like(root: Path, clips: int, seconds: float) -> None:
    (root / "audio").mkdir(parents=True)
    (root / "meta").mkdir()
    with open(root / "meta" / "esc50.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["filename", "fold", "target", "category", "esc10", "src_file", "take"])
        for i in range(clips):
            fold, target = 1 + i % 5, i % 10
            name = f"{fold}-{1000 + i}-A-{target}.wav"
            sf.write(root / "audio" / name, clip_wave(seconds, i).numpy(), SAMPLE_RATE, "PCM_16")
            writer.writerow([name, fold, target, f"class_{target}", "False", 1000 + i, "A"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--clips", type=int, default=64, help="clips per measurement")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=5.0, help="clip length (ESC-50: 5 s)")
    parser.add_argument("--long-seconds", type=float, default=25.0, help="for windows rows")
    parser.add_argument("--workers", type=int, default=2, help="audio-reading threads")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    encoder = SoundCLIPEncoder().to(device).eval()
    print(
        f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads; "
        f"SoundCLIP ResNet18 (random weights, float32); {args.clips} clips per measurement, "
        f"best of {args.repeats}"
    )

    waves = [clip_wave(args.seconds, i) for i in range(args.clips)]
    long_waves = [clip_wave(args.long_seconds, i) for i in range(args.clips)]
    windows_per_long = len(
        SoundCLIPEmbedder(encoder, crop="windows").frontend.windows(long_waves[0].to(device))[0]
    )
    print("\nmodel: embed_audio_batch on in-memory waveforms (clips/s)")
    print(f"  {'crop':8s} {'clip':>6s} " + " ".join(f"{f'batch {b}':>9s}" for b in args.batches))
    rows = [("start", waves, args.seconds), ("windows", waves, args.seconds)]
    rows.append(("windows", long_waves, args.long_seconds))
    for crop, clips, seconds in rows:
        embedder = SoundCLIPEmbedder(encoder, crop=crop)
        rates = [model_rate(embedder, clips, b, args.repeats, device) for b in args.batches]
        note = f"   ({windows_per_long} windows per clip)" if seconds == args.long_seconds else ""
        print(f"  {crop:8s} {seconds:5.0f}s " + " ".join(f"{r:9.2f}" for r in rates) + note)

    print(
        f"\npipeline: embed_dataset on {args.clips} ESC-50-like WAV files "
        f"({args.seconds:g} s, 44.1 kHz, 16 bit), {args.workers} reader threads, no cache"
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ESC-50"
        write_esc50_like(root, args.clips, args.seconds)
        dataset = load_esc50(root)
        for crop in ("start", "windows"):
            embedder = SoundCLIPEmbedder(encoder, crop=crop)
            best = None
            for _ in range(args.repeats):
                result = embed_dataset(
                    dataset, embedder, batch_size=32, workers=args.workers, cache=False
                )
                if best is None or result.seconds < best.seconds:
                    best = result
            print(
                f"  {crop:8s} batch 32: {best.clips_per_second:7.2f} clips/s "
                f"({best.seconds:.2f} s, of which {best.model_seconds:.2f} s in the embedder)"
            )


if __name__ == "__main__":
    main()
