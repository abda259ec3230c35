"""Throughput of SoundCLIP curation and training on this machine, and the data-loading share.

1. Writes ``--clips`` synthetic 10 s clips (VGGSound-like length) as class folders.
2. Curation: ``curate`` with each ``--workers`` count into a fresh store; clips/s.
3. Data loading alone: the training examples (crop, SpecAugment view, resize)
   of ``--batch-size`` clips from the curated store, in this process; clips/s.
4. Training: the real ResNet18 :class:`SoundCLIPEncoder` (random weights) at
   ``--batch-size``, against precomputed random text embeddings (no CLIP
   weights needed), ``--steps`` optimizer steps after one warm-up step. The
   trainer logs, per step, the time spent waiting for the batch
   (``data_seconds``) and the whole step; their ratio is the data-loading share.

    python benchmarks/training_speed.py [--clips 64] [--batch-size 32] [--steps 3]
        [--workers 1 2] [--loader-workers 0] [--threads 2] [--arch resnet18] [--no-train]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from soundguide.training.config import TrainConfig  # noqa: E402
from soundguide.training.curation import curate  # noqa: E402
from soundguide.training.data import ClipDataset, SpecAugment  # noqa: E402
from soundguide.training.store import CuratedStore  # noqa: E402
from soundguide.training.text import text_problem  # noqa: E402
from soundguide.training.trainer import train  # noqa: E402

SR = 44100
KINDS = ("tone", "chirp", "noise", "whistle")


def write_clips(root: Path, count: int, seconds: float) -> None:
    rng = np.random.default_rng(0)
    t = np.arange(int(SR * seconds)) / SR
    for i in range(count):
        kind = KINDS[i % len(KINDS)]
        if kind == "tone":
            y = 0.5 * np.sin(2 * np.pi * rng.uniform(200, 900) * t)
        elif kind == "chirp":
            y = 0.5 * np.sin(2 * np.pi * (100 * t + rng.uniform(200, 600) * t**2))
        elif kind == "noise":
            y = 0.2 * rng.standard_normal(t.size)
        else:
            y = 0.3 * np.sin(2 * np.pi * rng.uniform(5000, 9000) * t)
        folder = root / kind
        folder.mkdir(parents=True, exist_ok=True)
        sf.write(folder / f"{kind}_{i:04d}.wav", y.astype(np.float32), SR)


class RandomText:
    """Stands in for a CLIP text tower: a fixed random unit vector per prompt."""

    embed_dim = 512
    context_length = 77

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        rows = []
        for prompt in prompts:
            seed = int.from_bytes(prompt.encode()[:8].ljust(8, b"\0"), "little") % 2**31
            rows.append(torch.randn(self.embed_dim, generator=torch.Generator().manual_seed(seed)))
        return torch.nn.functional.normalize(torch.stack(rows), dim=-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="measured training steps")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--loader-workers", type=int, default=0)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--arch", default="resnet18", choices=["resnet18", "tiny"])
    parser.add_argument("--no-train", action="store_true", help="curation and data loading only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"machine: {os.cpu_count()} CPU cores, torch {torch.__version__}, {args.threads} threads, "
        f"load average {os.getloadavg()[0]:.2f} (other jobs share the CPU)"
    )

    with tempfile.TemporaryDirectory(prefix="sg-bench-") as tmp:
        tmp_path = Path(tmp)
        write_clips(tmp_path / "data", args.clips, args.seconds)
        # flush the new WAVs now: otherwise the store's first fsync waits for them
        os.sync()
        text_problem("warm up the tokenizer import")  # not part of curation throughput

        print(f"\ncuration of {args.clips} clips of {args.seconds:g} s (WAV, 44.1 kHz):")
        store = None
        for workers in args.workers:
            out = tmp_path / f"store-{workers}"
            started = time.perf_counter()
            report = curate(tmp_path / "data", out, workers=workers, shard_size=8, progress=False)
            seconds = time.perf_counter() - started
            print(
                f"  workers={workers}: {seconds:6.2f} s, {report.items / seconds:6.1f} clips/s "
                f"(process start-up included)"
            )
            store = out
        assert store is not None
        size = sum(p.stat().st_size for p in (store / "shards").glob("*.npy"))
        print(f"  store: {size / args.clips / 1e3:.0f} kB per clip (float16 spectrograms)")

        curated = CuratedStore(store)
        labels = curated.labels
        dataset = ClipDataset(
            curated,
            list(range(len(curated))),
            [labels.index(it.label) for it in curated.items],
            [-1] * len(curated),
            num_templates=4,
            augment=SpecAugment(),
        )
        times = []
        for repeat in range(4):  # the first is a warm-up
            started = time.perf_counter()
            batch = [dataset[(repeat, i % len(dataset))] for i in range(args.batch_size)]
            torch.utils.data.default_collate(batch)
            times.append(time.perf_counter() - started)
        loading = statistics.median(times[1:])
        print(
            f"\ndata loading alone (crop, SpecAugment view, resize, collate), one process: "
            f"{loading * 1e3:.0f} ms per batch of {args.batch_size}, "
            f"{args.batch_size / loading:.0f} clips/s"
        )

        if args.no_train:
            return
        run = tmp_path / "run"
        config = TrainConfig(
            store=str(store),
            out=str(run),
            clip="random-text",
            arch=args.arch,
            batch_size=args.batch_size,
            epochs=1000,
            max_steps=args.steps + 1,
            val_fraction=0.0,
            loader_workers=args.loader_workers,
            log_every=1,
            warmup_steps=0,
            device="cpu",
        )
        print(
            f"\ntraining: {args.arch} encoder, batch {args.batch_size} (x2 views), CPU fp32, "
            f"{args.loader_workers} DataLoader workers, 1 warm-up + {args.steps} measured steps ..."
        )
        train(config, text_encoder=RandomText(), progress=False)
        records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
        steps = [r for r in records if r["event"] == "step"][1:]
        step_time = sum(r["step_seconds"] for r in steps)
        data_time = sum(r["data_seconds"] for r in steps)
        for r in steps:
            print(
                f"  step {r['step']}: {r['step_seconds']:6.2f} s, data {r['data_seconds'] * 1e3:5.0f} ms, "
                f"{r['clips_per_second']:5.2f} clips/s"
            )
        print(
            f"  mean: {step_time / len(steps):.2f} s per step, "
            f"{args.batch_size * len(steps) / step_time:.2f} clips/s; "
            f"data loading {100 * data_time / step_time:.2f} % of step time"
        )


if __name__ == "__main__":
    main()
