"""Seconds of ``probe_dataset`` on a fixed 223 x 512 embedding set (45 classes, 5 folds).

The set has the shape of the issue's 223-clip ESC-50-layout recordings and
the geometry of a random encoder's embeddings (mean cosine about 0.995: a
shared vector, small class offsets, noise). An ESC-50 layout of 223 tiny
clips is written; the embedder returns a fixed table row per clip (the
clip's index is its DC level), so only the probe's own time is measured
(embeddings come from the cache when timed). ``--source`` times another
checkout's code, e.g. the code before a change::

    git worktree add /tmp/before HEAD~3
    OMP_NUM_THREADS=1 python benchmarks/probe_speed.py --source /tmp/before
    OMP_NUM_THREADS=1 python benchmarks/probe_speed.py

    python benchmarks/probe_speed.py [--repeats 3] [--source PATH]
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

parser = argparse.ArgumentParser(description="Seconds of probe_dataset on 223 clips.")
parser.add_argument("--repeats", type=int, default=3)
parser.add_argument("--source", help="a checkout whose soundguide is timed (default: this one)")
args = parser.parse_args()
sys.path.insert(0, args.source or str(Path(__file__).resolve().parents[1]))
torch.set_num_threads(1)

from soundguide.evaluation import load_esc50, probe_dataset  # noqa: E402

N, D, K = 223, 512, 45
rng = np.random.default_rng(0)
base = rng.standard_normal(D)
means = 0.025 * rng.standard_normal((K, D))
labels = np.arange(N) % K
folds = 1 + rng.permutation(N) % 5
table = torch.tensor(
    base + means[labels] + 0.065 * rng.standard_normal((N, D)), dtype=torch.float32
)
xn = torch.nn.functional.normalize(table, dim=-1)
off = ~torch.eye(N, dtype=bool)
print(f"mean cosine {float((xn @ xn.T)[off].mean()):.4f}")


class TableEmbedder:
    sample_rate = 16000
    identity = "bench-table-223x512"

    def embed_audio_batch(self, waves):
        return torch.stack([table[int(round(float(w.median()) * 1000)) - 1] for w in waves])


root = Path(tempfile.mkdtemp()) / "esc50"
(root / "audio").mkdir(parents=True)
(root / "meta").mkdir()
rows = []
for i in range(N):
    name = f"{folds[i]}-{1000 + i}-A-{labels[i]}.wav"
    sf.write(root / "audio" / name, np.full(1600, (i + 1) / 1000), 16000, subtype="FLOAT")
    rows.append(
        dict(
            filename=name,
            fold=folds[i],
            target=labels[i],
            category=f"class_{labels[i]}",
            esc10="False",
            src_file=1000 + i,
            take="A",
        )
    )
with open(root / "meta" / "esc50.csv", "w", newline="") as fh:
    w = csv.DictWriter(fh, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
data = load_esc50(root)
cache = root.parent / "cache"
probe_dataset(data, TableEmbedder(), cache_dir=cache, workers=0, Cs=(1.0,))  # fill the cache
repeats = args.repeats
times = []
for _ in range(repeats):
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = probe_dataset(data, TableEmbedder(), cache_dir=cache, workers=0)
    times.append(time.perf_counter() - t0)
r = report.result
print(f"probe_dataset seconds: {', '.join(f'{t:.2f}' for t in times)} (min {min(times):.2f})")
print(f"mean accuracy {r.mean_accuracy:.3f}; C per fold {[f.C for f in r.folds]}")
print(f"warnings raised: {sorted({str(w.category.__name__) for w in caught})}")
