"""How long e4e takes to encode a photo on the CPU.

Times ``encoder(e4e_input(images))`` under ``torch.no_grad()`` — the resize to
256x256 (antialiased bilinear) and the full-size ``Encoder4Editing`` forward
(IR-SE50 + 18 style heads, 267 M parameters, float32, random weights: speed
does not depend on them) — for each batch size, on ``--size`` px images.
Reports the median and the best of ``--repeats`` timed calls (after one
untimed warm-up call) in milliseconds per image, and the resize's share.

Usage::

    python benchmarks/e4e_encode.py [--threads N] [--batches 1 8] [--repeats 3] [--size 1024]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from soundguide.encoders.e4e import Encoder4Editing, e4e_input  # noqa: E402


def times_ms(fn: Callable[[], object], repeats: int) -> list[float]:
    fn()  # warm-up: first-touch memory, kernel selection
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1e3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=1024, help="input image side (px)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    encoder = Encoder4Editing().eval().requires_grad_(False)
    params = sum(p.numel() for p in encoder.parameters())
    print(
        f"torch {torch.__version__}, CPU, {torch.get_num_threads()} threads; e4e "
        f"({encoder.n_styles} styles, {params / 1e6:.0f} M parameters, float32, random weights); "
        f"{args.size} px input; {args.repeats} repeats after a warm-up"
    )
    print(f"{'batch':>5s} {'median ms/img':>14s} {'best ms/img':>12s} {'resize ms/img':>14s}")
    for batch in args.batches:
        images = torch.rand(batch, 3, args.size, args.size) * 2 - 1
        with torch.no_grad():
            total = times_ms(lambda x=images: encoder(e4e_input(x)), args.repeats)
            resize = times_ms(lambda x=images: e4e_input(x), args.repeats)
        print(
            f"{batch:5d} {statistics.median(total) / batch:14.1f} {min(total) / batch:12.1f} "
            f"{statistics.median(resize) / batch:14.2f}"
        )


if __name__ == "__main__":
    main()
