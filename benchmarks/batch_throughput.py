"""Items per second of ``soundguide batch``: batch sizes, and one process vs two.

Random weights of the released shapes for the generator: StyleGAN2 (rosinality,
style 512, 8 mapping layers, channel multiplier 2) at each ``--sizes``; the demo's
tiny random CLIP (2 layers of width 64, 224 px input) for an audio guidance
(random SoundCLIP) and a text guidance, plus ``latent_l2``. Each manifest row
is one seed. Every measurement is a fresh ``soundguide batch`` process (or
``torchrun`` with 2 processes) over the same ``--rows`` rows:

- ``items/s``: rows / the sum of the per-item seconds in ``index.csv`` (each
  batch's wall time from building its models to writing its items, shared by its
  items), i.e. the work alone; ``wall items/s``: rows / the whole command's wall
  time, start-up (imports, rendezvous) included.
- ``load``: seconds to build one batch's models and targets (``Editor.prepare``),
  against ``step``: seconds per optimization step at batch 1, both in this process.

    python benchmarks/batch_throughput.py [--sizes 64 256] [--batches 1 4 8] [--rows 8]
        [--steps 4] [--threads 2] [--device cpu|cuda] [--rounds 1] [--processes-only]
        [--step-rounds 0]
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def write_inputs(folder: Path, sizes: list[int], rows: int, steps: int) -> None:
    import torch

    from soundguide.demo import write_demo_inputs
    from soundguide.generators.stylegan2 import StyleGAN2Generator

    write_demo_inputs(folder, steps=steps)  # tiny CLIP, random SoundCLIP, a sound
    for size in sizes:
        torch.manual_seed(0)
        generator = StyleGAN2Generator(size, 512, 8, 2)
        torch.save({"g_ema": generator.state_dict()}, folder / f"g{size}.pt")
        (folder / f"g{size}.toml").write_text(
            f"""
[generator]
type = "stylegan2"
checkpoint = "g{size}.pt"

[[guidance]]
type = "audio"
path = "sound.wav"
encoder = "soundclip-random.pt"
clip_model = "clip-tiny.pt"

[[guidance]]
type = "text"
prompt = "a burning forest"
clip_model = "clip-tiny.pt"
weight = 0.5

[[regularizer]]
type = "latent_l2"
weight = 0.002

[optimization]
steps = {steps}
"""
        )
    (folder / "rows.csv").write_text("seed\n" + "".join(f"{s}\n" for s in range(rows)))


def run(
    folder: Path, size: int, batch: int, procs: int, threads: int, tag: str, device: str
) -> dict:
    out = folder / f"out-{tag}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
    env["OMP_NUM_THREADS"] = str(threads)
    launch = [sys.executable, "-m"]
    if procs > 1:
        launch += ["torch.distributed.run", "--standalone", "--nproc_per_node", str(procs), "-m"]
    command = [*launch, "soundguide.cli", "batch", str(folder / f"g{size}.toml")]
    command += [str(folder / "rows.csv"), "--out", str(out), "--batch-size", str(batch)]
    command += ["--threads", str(threads), "--device", device, "-q"]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{tag} failed:\n{done.stderr[-3000:]}")
    with open(out / "index.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    work = sum(float(r["seconds"]) for r in rows)
    # per-process work runs side by side: the run's work time is the busiest process's
    by_rank: dict[str, float] = {}
    for r in rows:
        by_rank[r["rank"]] = by_rank.get(r["rank"], 0.0) + float(r["seconds"])
    busiest = max(by_rank.values())
    return {"items": len(rows), "work": work, "busiest": busiest, "wall": wall}


def load_vs_step(folder: Path, size: int, threads: int, device: str) -> tuple[float, float]:
    import torch

    from soundguide.core.config import load_config
    from soundguide.core.engine import Editor
    from soundguide.core.plugins import load_registries

    torch.set_num_threads(threads)
    registries = load_registries(entry_points=False)
    config = load_config(folder / f"g{size}.toml", registries)
    editor = Editor(config, registries, device=device, progress=False)
    started = time.perf_counter()
    editor.prepare()
    load = time.perf_counter() - started
    result = editor.run()
    return load, sum(result.step_seconds) / len(result.step_seconds)


def step_rounds(
    folder: Path, size: int, batches: list[int], threads: int, device: str, rounds: int, steps: int
) -> dict[int, list[float]]:
    """Seconds per step and item of one optimization at each batch size, the batch sizes
    interleaved round after round in this process (load and writing left out), so a
    neighbour's load falls on all of them alike."""
    import torch

    from soundguide.core.config import load_config
    from soundguide.core.engine import Editor
    from soundguide.core.plugins import load_registries

    torch.set_num_threads(threads)
    registries = load_registries(entry_points=False)
    times: dict[int, list[float]] = {b: [] for b in batches}
    for round_ in range(rounds + 1):  # round 0 warms up (lazy imports, the allocator)
        for b in batches:
            seeds = ",".join(str(s) for s in range(b))
            overrides = [f"optimization.seed=[{seeds}]", f"optimization.steps={max(steps, 3)}"]
            config = load_config(folder / f"g{size}.toml", registries, overrides)
            result = Editor(config, registries, device=device, progress=False).run()
            if round_ > 0:  # the first step of a run warms up too
                times[b].append(statistics.median(result.step_seconds[1:]) / b)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2, help="cores to use in all")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (cuda:LOCAL_RANK each)")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each layout (median)")
    parser.add_argument(
        "--processes-only",
        action="store_true",
        help="only batch 1 on 1 process x N threads against 2 processes x N/2 threads",
    )
    parser.add_argument(
        "--step-rounds",
        type=int,
        default=0,
        help="also time the optimization step alone: this many interleaved rounds",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_inputs(folder, args.sizes, args.rows, args.steps)
        print(
            f"{args.rows} rows, {args.steps} steps, StyleGAN2 cm2 + tiny CLIP, {args.device}, "
            f"{args.threads} cores in all"
        )
        print(
            f"{'size':>5} {'procs x threads':>16} {'batch':>5} {'items/s':>8} {'wall items/s':>13}"
        )
        for size in args.sizes:
            load, step = load_vs_step(folder, size, args.threads, args.device)
            batches = [1] if args.processes_only else args.batches
            layouts = [(b, 1, args.threads) for b in batches]
            if args.threads >= 2:
                layouts.append((1, 2, args.threads // 2))
            rates: dict[tuple[int, int, int], list[float]] = {layout: [] for layout in layouts}
            walls: dict[tuple[int, int, int], list[float]] = {layout: [] for layout in layouts}
            for round_ in range(args.rounds):  # interleaved: a neighbour's load hits all alike
                for batch, procs, threads in layouts:
                    tag = f"{size}-{batch}-{procs}x{threads}-{round_}"
                    r = run(folder, size, batch, procs, threads, tag, args.device)
                    rates[(batch, procs, threads)].append(r["items"] / r["busiest"])
                    walls[(batch, procs, threads)].append(r["items"] / r["wall"])
            base = None
            for (batch, procs, threads), values in rates.items():
                rate = statistics.median(values)
                wall = statistics.median(walls[(batch, procs, threads)])
                base = base or rate
                print(
                    f"{size:>5} {f'{procs} x {threads}':>16} {batch:>5} {rate:>8.3f} "
                    f"{wall:>13.3f}   ({rate / base:.2f}x the first line; "
                    f"all: {', '.join(f'{v:.3f}' for v in values)})"
                )
            print(f"{size:>5} load {load:.2f} s per batch; a step at batch 1 {step:.3f} s")
            if args.step_rounds:
                times = step_rounds(
                    folder, size, args.batches, args.threads, args.device, args.step_rounds,
                    args.steps,
                )  # fmt: skip
                base = statistics.median(times[args.batches[0]])
                for b, values in times.items():
                    median = statistics.median(values)
                    print(
                        f"{size:>5} step alone, batch {b}: {median:.3f} s per item "
                        f"(median of {len(values)}; {base / median:.2f}x the items/s of "
                        f"batch {args.batches[0]}; all: {', '.join(f'{v:.3f}' for v in values)})"
                    )


if __name__ == "__main__":
    main()
