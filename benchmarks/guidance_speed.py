"""How much CLIP image guidance costs per optimization step.

Prints, for the device given (CPU by default):

1. the ``paper`` preprocessing (upsample x7 + average pooling) computed exactly
   with separable averaging matrices, against the literal
   ``nn.Upsample(scale_factor=7)`` + ``nn.AvgPool2d(size // 32)`` of the original
   code, forward + backward, at 256 and 1024 px (this checkout's code);
2. one guidance step at 256 px with a full-size ViT-B/32 (random weights,
   float32, image tower only as an edit builds it with ``build_clip``):
   preprocessing + ``encode_image`` + ``1 - cos`` + backward to the image, with
   the ``paper`` and the ``clip`` preprocessing, and the forward alone.

Part 2 runs each ``--source`` checkout's code (default: this one) in its own
child process, the sources taking turns for ``--rounds`` rounds, so a before
and an after are measured side by side under the same load::

    git worktree add /tmp/base <revision>
    python benchmarks/guidance_speed.py --source /tmp/base --source . --rounds 3

Usage::

    python benchmarks/guidance_speed.py [--device cpu|cuda] [--threads N] [--repeats N]
        [--rounds N] [--source PATH ...] [--skip-preprocessing] [--skip-literal-1024]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, statistics, sys, time, warnings

source, device, threads, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
sys.path.insert(0, source)
import torch

if threads:
    torch.set_num_threads(threads)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import clip
from soundguide.encoders.clip import CLIPEncoder, build_clip

VIT_B_32 = dict(
    embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768,
    vision_patch_size=32, context_length=77, vocab_size=49408, transformer_width=512,
    transformer_heads=8, transformer_layers=12,
)
device = torch.device(device)
torch.manual_seed(0)
state = clip.model.CLIP(**VIT_B_32).state_dict()
model = build_clip(state, device=device, text=False)
del state


def timed(fn):
    for _ in range(2):
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
    return times


def step(encoder):
    image = torch.randn(1, 3, 256, 256, device=device, requires_grad=True)
    target = torch.randn(1, encoder.embed_dim, device=device)

    def run():
        image.grad = None
        embedding = encoder.encode_image(image)
        loss = 1 - torch.nn.functional.cosine_similarity(embedding, target).sum()
        loss.backward()

    return run


paper = CLIPEncoder(model, preprocess="paper")
out = {
    "paper": timed(step(paper)),
    "clip": timed(step(CLIPEncoder(model, preprocess="clip"))),
    "forward": timed(lambda: paper.encode_image(torch.randn(1, 3, 256, 256, device=device))),
}
print(json.dumps(out))
"""


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


def preprocessing(args: argparse.Namespace, device: torch.device) -> None:
    sys.path.insert(0, str(ROOT))
    from soundguide.encoders.clip import paper_preprocess

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


def guidance(args: argparse.Namespace) -> None:
    sources = [str(Path(s).resolve()) for s in (args.source or [str(ROOT)])]
    times: dict[str, dict[str, list[float]]] = {s: {} for s in sources}
    print(
        "\nguidance step at 256 px, random ViT-B/32 float32, batch 1, image tower only "
        f"({args.rounds} rounds x {args.repeats} repeats per source, child processes taking turns)"
    )
    for round_ in range(args.rounds):
        for source in sources:
            command = [sys.executable, "-c", CHILD, source, args.device]
            command += [str(args.threads or 0), str(args.repeats)]
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                raise SystemExit(f"{source}: child failed:\n{result.stderr[-2000:]}")
            measured = json.loads(result.stdout.strip().splitlines()[-1])
            for key, values in measured.items():
                times[source].setdefault(key, []).extend(values)
            medians = ", ".join(f"{k} {statistics.median(v):.1f}" for k, v in measured.items())
            print(f"  round {round_ + 1}  {source}: {medians} ms")
    print("\nmedian ms over all rounds:")
    print(f"  {'source':40s} {'paper step':>11s} {'clip step':>11s} {'forward':>9s}")
    for source in sources:
        t = times[source]
        print(
            f"  {source[-40:]:40s} {statistics.median(t['paper']):11.1f} "
            f"{statistics.median(t['clip']):11.1f} {statistics.median(t['forward']):9.1f}"
        )
    print("  (paper/clip step: preprocessing + encode_image + 1 - cos + backward to the image)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--source", action="append", help="a checkout whose code to time (repeatable)"
    )
    parser.add_argument("--skip-preprocessing", action="store_true")
    parser.add_argument("--skip-literal-1024", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    if not args.skip_preprocessing:
        preprocessing(args, device)
    guidance(args)


if __name__ == "__main__":
    main()
