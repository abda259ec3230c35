"""How much CLIP image guidance costs per optimization step.

Prints, for the device given (CPU by default):

1. the ``paper`` preprocessing (upsample x7 + average pooling) computed exactly
   with separable averaging matrices, against the literal
   ``nn.Upsample(scale_factor=7)`` + ``nn.AvgPool2d(size // 32)`` of the original
   code, forward + backward, at 256 and 1024 px;
2. one guidance step at 256 px with a full-size ViT-B/32 (random weights,
   float32): preprocessing + ``encode_image`` + ``1 - cos`` + backward to the image.

Usage::

    python benchmarks/guidance_speed.py [--device cpu|cuda] [--threads N] [--repeats N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from soundguide.encoders.clip import CLIPEncoder, paper_preprocess  # noqa: E402
from soundguide.encoders.clip_model import CLIP, VIT_B_32  # noqa: E402


def literal_paper(image: torch.Tensor) -> torch.Tensor:
    size = image.shape[-1]
    return nn.AvgPool2d(kernel_size=size // 32)(nn.Upsample(scale_factor=7)(image))


def timed(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn`` in milliseconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def preprocessing_step(
    preprocess: Callable[[torch.Tensor], torch.Tensor], size: int, device: torch.device
) -> Callable[[], None]:
    image = torch.randn(1, 3, size, size, device=device, requires_grad=True)
    weight = torch.randn(1, 3, 224, 224, device=device)

    def step() -> None:
        image.grad = None
        (preprocess(image) * weight).sum().backward()

    return step


def guidance_step(
    encoder: CLIPEncoder,
    size: int,
    device: torch.device,
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Callable[[], None]:
    image = torch.randn(1, 3, size, size, device=device, requires_grad=True)
    target = torch.randn(1, encoder.embed_dim, device=device)

    def step() -> None:
        image.grad = None
        if preprocess is None:
            embedding = encoder.encode_image(image)
        else:
            embedding = encoder.model.encode_image(preprocess(image))
        loss = 1 - nn.functional.cosine_similarity(embedding, target).sum()
        loss.backward()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-literal-1024", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads")

    print("\npaper preprocessing, forward + backward, one image (median ms)")
    for size in (256, 1024):
        exact = timed(preprocessing_step(paper_preprocess, size, device), device, args.repeats)
        line = f"  {size:4d} px  exact (A @ x @ A^T): {exact:9.2f} ms"
        if not (size == 1024 and args.skip_literal_1024):
            literal = timed(
                preprocessing_step(literal_paper, size, device), device, max(1, args.repeats // 2)
            )
            line += f"   literal upsample+pool: {literal:9.2f} ms   ({literal / exact:.0f}x)"
        print(line)

    torch.manual_seed(0)
    model = CLIP(VIT_B_32)
    model = model.to(device=device, dtype=torch.float32).eval().requires_grad_(False)
    encoder = CLIPEncoder(model, preprocess="paper")
    print("\nguidance step at 256 px, random ViT-B/32 float32, batch 1 (median ms)")
    print("  (preprocess + encode_image + 1 - cos + backward to the image)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = timed(guidance_step(encoder, 256, device), device, args.repeats)
        literal = timed(guidance_step(encoder, 256, device, literal_paper), device, args.repeats)
        forward = timed(
            lambda: encoder.encode_image(torch.randn(1, 3, 256, 256, device=device)),
            device,
            args.repeats,
        )
    print(f"  exact paper preprocessing:   {full:9.2f} ms")
    print(f"  literal upsample+pool:       {literal:9.2f} ms")
    print(f"  forward only (no backward):  {forward:9.2f} ms")


if __name__ == "__main__":
    main()
