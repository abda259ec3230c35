"""Seconds per image of a StyleGAN2 forward and backward pass, alone and in a batch.

What a video's batching can gain from the generator: a random-weight
StyleGAN2 (``--size``, style dim 512, 8 mapping layers,
``--channel-multiplier``) with frozen weights, as the engine runs it, on the
CPU with ``--threads`` threads; ``--batch`` images one at a time and then in
one batch, in turns, ``--repeats`` times, in one process.

    python benchmarks/generator_batch.py [--size 256] [--batch 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--channel-multiplier", type=int, default=1)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    from soundguide.core.engine import _freeze
    from soundguide.core.interfaces import RunContext
    from soundguide.generators.stylegan2 import StyleGAN2Generator
    from soundguide.plugins.stylegan2 import StyleGAN2

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        model = StyleGAN2Generator(args.size, 512, 8, args.channel_multiplier)
        torch.save({"g_ema": model.state_dict()}, Path(tmp) / "g.pt")
        config = StyleGAN2.Config(type="stylegan2", checkpoint=Path(tmp) / "g.pt")
        generator = StyleGAN2(config, RunContext())
    _freeze(generator)
    for part in vars(generator).values():
        _freeze(part)

    def step(n: int) -> None:
        w = generator.sample_latent(n, 0.7, torch.Generator().manual_seed(0))
        w.requires_grad_(True)
        generator.synthesize(w).square().mean().backward()

    step(1)
    step(args.batch)  # warm-up: caches, allocator
    alone, batched = [], []
    for _ in range(args.repeats):
        started = time.perf_counter()
        for _ in range(args.batch):
            step(1)
        alone.append((time.perf_counter() - started) / args.batch)
        started = time.perf_counter()
        step(args.batch)
        batched.append((time.perf_counter() - started) / args.batch)
    print(
        f"{args.size} px (channel multiplier {args.channel_multiplier}), {args.threads} thread(s): "
        f"forward + backward per image alone {', '.join(f'{s:.2f}' for s in alone)} s; "
        f"in a batch of {args.batch} {', '.join(f'{s:.2f}' for s in batched)} s"
    )


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
