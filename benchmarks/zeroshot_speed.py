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

``--command`` measures instead the whole ``soundguide zeroshot`` command, once
per protocol (``--protocols``), in a child process that runs the code of
``--source`` (another checkout, e.g. the code before a change): an ESC-50
layout of ``--set-clips`` 5 s clips of ``--set-classes`` classes, folds 1-5,
cut from the recordings in ``--recordings`` (offsets and gains varied, 48 kHz
files resampled, 44.1 kHz 16-bit mono as ESC-50 ships), random SoundCLIP
weights (512-d) and a random CLIP of 512-d embeddings with tiny towers, cache
off. Reported: the encoding clips/s of the report (reading + front end +
encoder) and the command's seconds (loading the models and the prompts too).
A checkout without ``--protocol`` gets the nearest flags it has for
``authors`` (``--crop center --raw-labels --template "{label}"``: no centred
padding).

Usage::

    python benchmarks/zeroshot_speed.py [--device cpu|cuda] [--threads N] [--clips 64]
    git worktree add /tmp/before HEAD   # before changing anything
    python benchmarks/zeroshot_speed.py --command --source /tmp/before
    python benchmarks/zeroshot_speed.py --command
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

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


ESC50_CATEGORIES = (
    "dog rooster pig cow frog cat hen insects sheep crow rain sea_waves crackling_fire "
    "crickets chirping_birds water_drops wind pouring_water toilet_flush thunderstorm "
    "crying_baby sneezing clapping breathing coughing footsteps laughing brushing_teeth "
    "snoring drinking_sipping door_wood_knock mouse_click keyboard_typing door_wood_creaks "
    "can_opening washing_machine vacuum_cleaner clock_alarm clock_tick glass_breaking "
    "helicopter chainsaw siren car_horn engine train church_bells airplane fireworks hand_saw"
).split()
"""ESC-50's classes by target id (its ``category`` strings)."""


def write_esc50_from_recordings(
    root: Path, recordings: list[Path], clips: int, classes: int, seconds: float = 5.0
) -> None:
    """``clips`` clips of ``seconds`` cut from ``recordings`` (at 44.1 kHz, offsets and gains
    drawn per clip, zero-padded at the end when a recording is shorter), in ESC-50's layout."""
    from soundguide.encoders.audio import load_audio

    waves = [load_audio(p, SAMPLE_RATE).numpy() for p in recordings]
    rng = np.random.default_rng(0)
    length = int(seconds * SAMPLE_RATE)
    (root / "audio").mkdir(parents=True)
    (root / "meta").mkdir()
    with open(root / "meta" / "esc50.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["filename", "fold", "target", "category", "esc10", "src_file", "take"])
        for i in range(clips):
            wave = waves[i % len(waves)]
            start = int(rng.integers(0, max(1, len(wave) - length)))
            clip = np.zeros(length, dtype=np.float32)
            part = wave[start : start + length]
            gain = 10 ** (rng.uniform(-20, 0) / 20) / max(1e-6, float(np.abs(part).max()))
            clip[: len(part)] = 0.9 * gain * part
            fold, target = 1 + i % 5, i % classes
            name = f"{fold}-{100000 + i}-A-{target}.wav"
            sf.write(root / "audio" / name, clip, SAMPLE_RATE, "PCM_16")
            writer.writerow(
                [name, fold, target, ESC50_CATEGORIES[target], "False", 100000 + i, "A"]
            )


CHILD = r"""
import json, sys, time

source, threads, argv = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
sys.path.insert(0, source)
import torch

torch.set_num_threads(threads)
import soundguide.cli

tic = time.perf_counter()
code = soundguide.cli.main(argv)
print(json.dumps({"code": code, "seconds": time.perf_counter() - tic}))
"""


def protocol_flags(source: Path, protocol: str) -> tuple[list[str], str]:
    """The flags of ``protocol`` for the checkout at ``source`` and a note when only the
    nearest ones exist there."""
    has_protocols = "PROTOCOLS" in (source / "soundguide/evaluation/zeroshot.py").read_text()
    if has_protocols:
        return ["--protocol", protocol], ""
    if protocol == "soundguide":
        return [], ""
    return ["--crop", "center", "--raw-labels", "--template", "{label}"], " (nearest: no --pad)"


def command_rates(args: argparse.Namespace) -> None:
    """Time ``soundguide zeroshot`` on an ESC-50 layout cut from real recordings."""
    from soundguide.encoders.clip import clip

    source = args.source.resolve()
    recordings = sorted(Path(args.recordings).glob("*.wav"))
    if not recordings:
        raise SystemExit(f"no recordings (*.wav) in {args.recordings}")
    with tempfile.TemporaryDirectory(prefix="zeroshot-speed-") as tmp:
        tmp = Path(tmp)
        root = tmp / "ESC-50"
        write_esc50_from_recordings(root, recordings, args.set_clips, args.set_classes)
        torch.manual_seed(0)
        torch.save(SoundCLIPEncoder().state_dict(), tmp / "soundclip.pt")
        text = clip.model.CLIP(
            embed_dim=512,
            image_resolution=224,
            vision_layers=2,
            vision_width=64,
            vision_patch_size=32,
            context_length=77,
            vocab_size=49408,
            transformer_width=64,
            transformer_heads=1,
            transformer_layers=2,
        )
        torch.save(text.state_dict(), tmp / "clip.pt")
        print(
            f"code: {source}; soundguide zeroshot on {args.set_clips} clips of 5 s "
            f"({args.set_classes} classes, folds 1-5) cut from {len(recordings)} recordings in "
            f"{args.recordings}; random SoundCLIP (512-d) and tiny CLIP; device {args.device}, "
            f"{args.threads or torch.get_num_threads()} torch threads, batch {args.batch}, "
            f"{args.workers} reader threads, no cache; best of {args.repeats}"
        )
        env = {**os.environ, "SOUNDGUIDE_HOME": str(tmp / "home")}
        for protocol in args.protocols:
            flags, note = protocol_flags(source, protocol)
            argv = ["zeroshot", "esc50", str(root), "--out", str(tmp / "out"), "--overwrite"]
            argv += ["--encoder", str(tmp / "soundclip.pt"), "--clip-model", str(tmp / "clip.pt")]
            argv += ["--no-cache", "-q", "--device", args.device, "--batch-size", str(args.batch)]
            argv += ["--workers", str(args.workers), *flags]
            best = None
            for _ in range(args.repeats):
                out = subprocess.run(
                    [
                        sys.executable,
                        "-c",
                        CHILD,
                        str(source),
                        str(args.threads or torch.get_num_threads()),
                        json.dumps(argv),
                    ],
                    capture_output=True,
                    text=True,
                    env=env,
                    check=False,
                )
                lines = out.stdout.strip().splitlines()
                if out.returncode != 0 or not lines or json.loads(lines[-1])["code"] != 0:
                    tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
                    raise SystemExit(f"zeroshot failed ({protocol}): {tail}")
                report = json.loads((tmp / "out" / "zeroshot.json").read_text())
                run = {"command_seconds": json.loads(lines[-1])["seconds"], **report["encoding"]}
                if best is None or run["clips_per_second"] > best["clips_per_second"]:
                    best = run
            print(
                f"  {protocol:10s}{note}: {best['clips_per_second']:7.2f} clips/s encoding "
                f"({best['clips']} clips in {best['seconds']:.2f} s), whole command "
                f"{best['command_seconds']:.2f} s"
            )


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
    parser.add_argument(
        "--command", action="store_true", help="time the soundguide zeroshot command instead"
    )
    parser.add_argument("--source", type=Path, default=ROOT, help="checkout whose code runs")
    parser.add_argument(
        "--recordings",
        type=Path,
        default=ROOT.parent / "shared" / "audio",
        help="folder of recordings to cut the --command data set from",
    )
    parser.add_argument("--set-clips", type=int, default=223)
    parser.add_argument("--set-classes", type=int, default=45)
    parser.add_argument("--protocols", nargs="+", default=["soundguide", "authors"])
    parser.add_argument("--batch", type=int, default=32, help="--batch-size of the command")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.command:
        command_rates(args)
        return
    device = torch.device(args.device)
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
