"""Speed of soundguide's StyleGAN2 generator against the rosinality reference.

Both generators are built from one random state dict (the reference code path
is ``tests/generators/rosinality_reference.py``), run in this one process, and
timed interleaved (reference, fast, fast without the Winograd layers as the
plugin's low-memory setting runs it, fast bf16 in turn, every repetition) so
that load from other processes hits them alike. Reported per size and batch:

* ``fwd``: median seconds of ``synthesize(w)`` under ``torch.no_grad()``
  (after ``--warmup`` untimed calls, which build caches and first-touch memory);
* ``fwd+bwd``: median seconds of a forward pass and ``backward()`` of a scalar
  loss with respect to W+ only (every parameter has ``requires_grad=False``);
* ``saved MB``: bytes of the tensors autograd keeps for the backward pass
  (unique storages, counted with ``saved_tensors_hooks``);
* ``peak MB``: the largest increase of the process's resident memory during
  the last timed fwd+bwd call over its value before the call, sampled every
  0.5 ms from ``/proc/self/statm`` after ``malloc_trim(0)`` (Linux only;
  approximate);
* ``max|diff|/mean|ref|``: the largest absolute difference from the reference
  output divided by the reference output's mean magnitude (fwd, float32);
* the speed-up ratios (reference time / fast time).

Usage::

    python benchmarks/stylegan2_speed.py                 # 64, 256, 1024 px; batch 1 and 4
    python benchmarks/stylegan2_speed.py --sizes 256 --batches 1 --reps 3
    python benchmarks/stylegan2_speed.py --sizes 64 --batches 1 --bf16 --compile
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from soundguide.generators.stylegan2 import load_stylegan2  # noqa: E402
from tests.generators.rosinality_reference import Generator as Reference  # noqa: E402

Fn = Callable[[torch.Tensor], torch.Tensor]


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


LIBC = _libc()
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * PAGE
    except OSError:
        return 0


class PeakRSS:
    """Largest RSS increase over the value at entry, sampled by a thread."""

    def __init__(self, interval: float = 0.0005) -> None:
        self.interval = interval
        self.peak = 0

    def __enter__(self) -> PeakRSS:
        if LIBC is not None:
            LIBC.malloc_trim(0)
        self.base = rss_bytes()
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes() - self.base)
            time.sleep(self.interval)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes() - self.base)


def saved_bytes_fwd_bwd(fn: Fn, w: torch.Tensor) -> int:
    """One untimed fwd+bwd; returns the bytes of unique storages autograd saved for it."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        try:
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        except (RuntimeError, NotImplementedError):
            pass
        return t

    ww = w.clone().requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(ww)
    out.float().square().mean().backward()
    return sum(seen.values())


def fwd_call(fn: Fn, w: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        with torch.no_grad():
            fn(w)

    return run


def fwd_bwd_call(fn: Fn, w: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        ww = w.clone().requires_grad_()
        out = fn(ww)
        out.float().square().mean().backward()

    return run


def timed(run: Callable[[], None]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def bench_one(
    size: int, batch: int, reps: int, warmup: int, bf16: bool, compile_: bool, seed: int
) -> list[dict[str, object]]:
    torch.manual_seed(seed)
    ref = Reference(size, 512, 8, channel_multiplier=2).eval().requires_grad_(False)
    state = ref.state_dict()
    fast = load_stylegan2(state)
    w = torch.randn(batch, fast.num_layers, 512)

    direct = load_stylegan2(state)
    direct.winograd = False  # the plugin's low-memory setting (47 MB less at 256 px)
    impls: dict[str, Fn] = {
        "reference": lambda x: ref([x], input_is_latent=True, randomize_noise=False)[0],
        "fast fp32": fast.synthesize,
        "fast no-wino": direct.synthesize,
    }
    if bf16:
        impls["fast bf16"] = lambda x: fast.synthesize(x, precision="bf16")
    if compile_:
        compiled = torch.compile(fast.synthesize)
        impls["fast compiled"] = compiled

    # the first, untimed calls warm up and give the outputs and saved-tensor sizes
    outputs: dict[str, torch.Tensor] = {}
    saved: dict[str, int] = {}
    for name, fn in impls.items():
        with torch.no_grad():
            outputs[name] = fn(w).float()
        saved[name] = saved_bytes_fwd_bwd(fn, w)
    ref_out = outputs["reference"]
    scale = ref_out.abs().mean().item()

    times: dict[str, dict[str, list[float]]] = {n: {"fwd": [], "fb": []} for n in impls}
    calls = {n: {"fwd": fwd_call(fn, w), "fb": fwd_bwd_call(fn, w)} for n, fn in impls.items()}
    for _ in range(warmup - 1):
        for name in impls:
            calls[name]["fwd"]()
            calls[name]["fb"]()
    peaks: dict[str, int] = {}
    for rep in range(reps):
        for name in impls:
            times[name]["fwd"].append(timed(calls[name]["fwd"]))
            if rep == reps - 1:  # the last fwd+bwd also gives the memory peak
                with PeakRSS() as peak:
                    times[name]["fb"].append(timed(calls[name]["fb"]))
                peaks[name] = peak.peak
            else:
                times[name]["fb"].append(timed(calls[name]["fb"]))

    rows = []
    for name in impls:
        rows.append(
            {
                "size": size,
                "batch": batch,
                "impl": name,
                "fwd": statistics.median(times[name]["fwd"]),
                "fb": statistics.median(times[name]["fb"]),
                "peak": peaks[name] / 2**20,
                "saved": saved[name] / 2**20,
                "diff": (outputs[name] - ref_out).abs().max().item() / scale,
            }
        )
    base = rows[0]
    for row in rows:
        row["x_fwd"] = base["fwd"] / row["fwd"]  # type: ignore[operator]
        row["x_fb"] = base["fb"] / row["fb"]  # type: ignore[operator]
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions (median)")
    parser.add_argument(
        "--big-reps", type=int, default=1, help="timed repetitions at 1024 px and more"
    )
    parser.add_argument(
        "--warmup", type=int, default=1, help="untimed calls first (at least 1 is made)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument(
        "--bf16",
        action="store_true",
        help="also time precision='bf16' (autocast); very slow on CPUs without bf16 units",
    )
    parser.add_argument(
        "--compile", dest="compile_", action="store_true", help="also time torch.compile"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPUs; channel multiplier 2, style_dim 512, n_mlp 8; "
        f"median of {args.reps} ({args.big_reps} at 1024+ px) after {args.warmup} warm-up; "
        f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}"
    )
    header = (
        f"{'size':>5} {'batch':>5}  {'impl':<13} {'fwd s':>7} {'fwd+bwd s':>9} "
        f"{'x fwd':>6} {'x f+b':>6} {'peak MB':>8} {'saved MB':>8} {'max|diff|/mean|ref|':>20}"
    )
    print(header)
    print("-" * len(header))
    for size in args.sizes:
        for batch in args.batches:
            reps = args.big_reps if size >= 1024 else args.reps
            for row in bench_one(
                size, batch, reps, args.warmup, args.bf16, args.compile_, args.seed
            ):
                print(
                    f"{row['size']:>5} {row['batch']:>5}  {row['impl']:<13} {row['fwd']:>7.3f} "
                    f"{row['fb']:>9.3f} {row['x_fwd']:>6.2f} {row['x_fb']:>6.2f} "
                    f"{row['peak']:>8.0f} {row['saved']:>8.0f} {row['diff']:>20.2e}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
