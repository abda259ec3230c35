"""Peak memory of ``load_stylegan2`` on a rosinality checkpoint file, in a child process.

Writes a checkpoint of random weights with the keys and shapes of a released
model (``tests/data/stylegan2_<size>_cm2.keys.json``; ``g_ema`` and
``latent_avg``, as rosinality's ``convert_weight.py`` writes them) and loads
it with :func:`soundguide.generators.stylegan2.load_stylegan2` in a child
process. The child first loads a small checkpoint (imports and allocator
warmed up), notes its private memory (``RssAnon`` in ``/proc/self/status``),
then loads the big one while a thread samples ``RssAnon`` and ``RssFile``
every millisecond. Reported: the load's seconds, the peak ``RssAnon`` over
the warmed-up level (what loading cost in private memory; the weights
themselves are one copy), the peak ``RssFile`` over its level (file pages
read, which the kernel may take back), ``RssAnon`` after the load, and
whether the file is still mapped into the process once the generator is
built.

``--source`` runs another checkout's code, e.g. the code before a change::

    mkdir /tmp/base && git archive HEAD | tar -x -C /tmp/base
    python benchmarks/stylegan2_load_memory.py --source /tmp/base
    python benchmarks/stylegan2_load_memory.py

Linux only (``/proc``).

    python benchmarks/stylegan2_load_memory.py [--size 1024] [--repeats 3] [--source PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import gc, json, sys, threading, time

source, path, small = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path.insert(0, source)


def status():
    found = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(("RssAnon:", "RssFile:")):
                found[line.split(":")[0]] = int(line.split()[1])
    return found["RssAnon"], found["RssFile"]


def mapped(path):
    with open("/proc/self/maps") as fh:
        return any(line.rstrip().endswith(path) for line in fh)


import torch

torch.set_num_threads(1)
from soundguide.generators.stylegan2 import load_stylegan2

load_stylegan2(small)
gc.collect()
anon0, file0 = status()
peak = [anon0, file0]
done = threading.Event()


def sample():
    while not done.is_set():
        anon, file = status()
        peak[0], peak[1] = max(peak[0], anon), max(peak[1], file)
        time.sleep(0.001)


sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
tic = time.perf_counter()
g = load_stylegan2(path)
seconds = time.perf_counter() - tic
done.set()
sampler.join()
gc.collect()
anon, file = status()
weights = sum(t.nbytes for t in g.state_dict().values())
print(json.dumps({
    "seconds": seconds, "weights_kib": weights // 1024,
    "anon_peak_kib": max(peak[0], anon) - anon0, "file_peak_kib": max(peak[1], file) - file0,
    "anon_after_kib": anon - anon0, "still_mapped": mapped(path),
}))
"""


def write_checkpoint(path: Path, size: int) -> None:
    """Random weights under the released model's keys and shapes, plus a latent_avg."""
    rows = json.loads((ROOT / "tests" / "data" / f"stylegan2_{size}_cm2.keys.json").read_text())
    gen = torch.Generator().manual_seed(0)
    state = {key: torch.randn(shape, generator=gen) for key, shape, _ in rows}
    torch.save({"g_ema": state, "latent_avg": torch.randn(512, generator=gen)}, path)


def run_child(source: Path, path: Path, small: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(source), str(path), str(small)],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        tail = out.stderr.strip().splitlines()[-1:] or ["no output"]
        raise SystemExit(f"child failed: {tail[0]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=1024, choices=[256, 1024])
    parser.add_argument("--repeats", type=int, default=3, help="child processes")
    parser.add_argument("--source", type=Path, default=ROOT, help="checkout whose code runs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="stylegan2-load-") as folder:
        path, small = Path(folder) / f"g{args.size}.pt", Path(folder) / "g8.pt"
        write_checkpoint(path, args.size)
        sys.path.insert(0, str(ROOT))
        from soundguide.generators.stylegan2 import StyleGAN2Generator

        torch.save({"g_ema": StyleGAN2Generator(8, 16, 1, 1).state_dict()}, small)
        mib = path.stat().st_size / 2**20
        print(f"code: {args.source.resolve()}; {args.size} px checkpoint of {mib:.0f} MiB")
        runs = [run_child(args.source.resolve(), path, small) for _ in range(args.repeats)]
    for r in runs:
        print(
            f"  {r['seconds']:6.2f} s  peak RssAnon +{r['anon_peak_kib'] / 1024:6.0f} MiB  "
            f"peak RssFile +{r['file_peak_kib'] / 1024:6.0f} MiB  "
            f"RssAnon after +{r['anon_after_kib'] / 1024:6.0f} MiB  "
            f"(weights {r['weights_kib'] / 1024:.0f} MiB)  "
            f"file {'still mapped' if r['still_mapped'] else 'unmapped'}"
        )
    peak = statistics.median(r["anon_peak_kib"] for r in runs) / 1024
    print(f"median peak RssAnon over the warmed-up level: {peak:.0f} MiB")


if __name__ == "__main__":
    main()
