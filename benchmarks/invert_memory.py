"""Peak private memory and time of ``soundguide invert`` at 256 and 1024 px.

For each size a fresh process runs ``soundguide invert`` on one photo
(scikit-image's astronaut, 512 x 512, resized and centre-cropped) with random
weights of the released shapes: StyleGAN2 with channel multiplier 2 and
512-dim styles, torchvision's VGG16 convolutions for LPIPS and, for
``e4e+projection`` at 1024 px, a full-size e4e encoder (18 styles). A thread
samples ``RssAnon`` (private memory; ``VmHWM`` would count shared library
pages too) every 5 ms; reported are the peak over the process's start, the
seconds per projection step and the whole command's seconds. One torch
thread, CPU.

    python benchmarks/invert_memory.py [--sizes 256 1024] [--steps 5] [--e4e]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from peak_memory import PeakSampler, rss_anon_kib  # benchmarks/peak_memory.py

ROOT = Path(__file__).resolve().parents[1]


def write_inputs(folder: Path, size: int, e4e: bool) -> None:
    import torch
    from PIL import Image
    from skimage.data import astronaut

    sys.path.insert(0, str(ROOT))
    from soundguide.generators.stylegan2 import StyleGAN2Generator
    from tests.factories import save_random_e4e, save_random_vgg16

    torch.manual_seed(0)
    torch.save({"g_ema": StyleGAN2Generator(size, 512, 8, 2).state_dict()}, folder / f"g{size}.pt")
    if not (folder / "vgg.pth").exists():
        save_random_vgg16(folder / "vgg.pth")
        Image.fromarray(astronaut()).save(folder / "photo.png")
    if e4e and size == 1024 and not (folder / "e4e.pt").exists():
        save_random_e4e(folder / "e4e.pt", size=1024)


def child(folder: Path, size: int, steps: int, method: str) -> None:
    import torch

    torch.set_num_threads(1)
    from soundguide.cli import main

    sampler = PeakSampler()
    base = rss_anon_kib()
    sampler.start()
    started = time.perf_counter()
    args = [
        "invert",
        str(folder / "photo.png"),
        "--generator",
        str(folder / f"g{size}.pt"),
        "--method",
        method,
        "--steps",
        str(steps),
        "--set",
        f'inversion.lpips="{folder / "vgg.pth"}"',
        "--set",
        "inversion.mean_samples=10000",
        "--out",
        str(folder / f"out-{size}-{method}"),
        "--overwrite",
        "-q",
    ]
    if method == "e4e+projection":
        args += ["--set", f'inversion.e4e="{folder / "e4e.pt"}"']
    code = main(args)
    seconds = time.perf_counter() - started
    sampler.running = False
    sampler.join()
    report = json.loads((folder / f"out-{size}-{method}" / "photo" / "invert.json").read_text())
    print(
        json.dumps(
            {
                "code": code,
                "base_mib": base / 1024,
                "peak_mib": sampler.peak / 1024,
                "seconds": seconds,
                "invert_seconds": report["seconds"],
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--e4e", action="store_true", help="also e4e+projection at 1024 px")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        folder, size, steps, method = args.child
        child(Path(folder), int(size), int(steps), method)
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for size in args.sizes:
            write_inputs(folder, size, args.e4e)
            methods = ["projection"] + (["e4e+projection"] if args.e4e and size == 1024 else [])
            for method in methods:
                for steps in (0, args.steps):  # steps 0: loading, mean W and rendering alone
                    out = subprocess.run(
                        [sys.executable, __file__, "--child", tmp, str(size), str(steps), method],
                        capture_output=True,
                        text=True,
                        check=True,
                        cwd=ROOT,
                    )
                    rows.append((size, method, steps, json.loads(out.stdout.splitlines()[-1])))
    print(f"{'size':>5}  {'method':<15} {'steps':>5}  {'peak private':>13}  {'seconds':>8}")
    for size, method, steps, r in rows:
        print(
            f"{size:>5}  {method:<15} {steps:>5}  {r['peak_mib']:>9.0f} MiB  {r['seconds']:>8.1f}"
        )
    by_key = {(s, m, k): r for s, m, k, r in rows}
    for size, method, steps, r in rows:
        if steps:
            zero = by_key[(size, method, 0)]
            per_step = (r["invert_seconds"] - zero["invert_seconds"]) / steps
            print(f"{size} px {method}: {per_step:.2f} s per projection step")


if __name__ == "__main__":
    main()
