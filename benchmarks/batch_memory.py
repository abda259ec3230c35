"""Private memory per batch item of an edit step: the measurement behind ``optimization.max_batch``.

For each generator size and batch size, a fresh process runs two edit steps
(StyleGAN2 with channel multiplier 2 at that size, a text guidance through a
full-size ViT-B/32, float32, CPU, random weights of the released shapes) and
reports its peak private memory: the high-water mark of ``RssAnon`` sampled
every 5 ms (``VmHWM`` would count shared library pages too). The slope over
the batch sizes is what each extra item costs.

    python benchmarks/batch_memory.py [--sizes 256 1024] [--batches 1 2 4]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from peak_memory import PeakSampler  # benchmarks/peak_memory.py

ROOT = Path(__file__).resolve().parents[1]


def write_inputs(folder: Path, size: int) -> None:
    import torch

    from soundguide.encoders.clip import VIT_B_32, clip
    from soundguide.generators.stylegan2 import StyleGAN2Generator

    torch.manual_seed(0)
    torch.save({"g_ema": StyleGAN2Generator(size, 512, 8, 2).state_dict()}, folder / f"g{size}.pt")
    if not (folder / "clip.pt").exists():
        torch.save(clip.model.CLIP(**VIT_B_32).state_dict(), folder / "clip.pt")


def child(folder: Path, size: int, batch: int) -> None:
    sampler = PeakSampler()
    sampler.start()
    import torch

    import soundguide
    from soundguide.core.config import config_from_dict
    from soundguide.core.plugins import load_registries

    torch.set_num_threads(2)
    registries = load_registries(entry_points=False)
    config = config_from_dict(
        {
            "generator": {"type": "stylegan2", "checkpoint": str(folder / f"g{size}.pt")},
            "guidance": [
                {
                    "type": "text",
                    "prompt": "a burning forest",
                    "clip_model": str(folder / "clip.pt"),
                }
            ],
            "optimization": {"steps": 2, "seed": list(range(batch)), "max_batch": 1024},
        },
        registries,
    )
    started = time.perf_counter()
    soundguide.Editor(config, registries, progress=False).run()
    sampler.running = False
    sampler.join()
    seconds = time.perf_counter() - started
    print(json.dumps({"size": size, "batch": batch, "peak_mib": sampler.peak / 1024, "s": seconds}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(Path(args.child[0]), int(args.child[1]), int(args.child[2]))
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for size in args.sizes:
            write_inputs(folder, size)
            rows = []
            for batch in args.batches:
                out = subprocess.run(
                    [sys.executable, __file__, "--child", tmp, str(size), str(batch)],
                    check=True,
                    capture_output=True,
                    text=True,
                    cwd=ROOT,
                ).stdout
                rows.append(json.loads(out.strip().splitlines()[-1]))
                print(
                    f"{size} px, batch {batch}: peak private {rows[-1]['peak_mib']:.0f} MiB, "
                    f"{rows[-1]['s']:.1f} s for two steps",
                    flush=True,
                )
            first, last = rows[0], rows[-1]
            if last["batch"] > first["batch"]:
                slope = (last["peak_mib"] - first["peak_mib"]) / (last["batch"] - first["batch"])
                print(f"{size} px: {slope:.0f} MiB per extra item", flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
