"""Peak memory and time of ``embed_audio`` on a file, by the file's length.

Writes 16-bit mono WAV files at 44.1 kHz (by default 10 s, 9 min, 10 min and
3 h; the 3-hour file is about 950 MB) and embeds each with a random-weight
``SoundCLIPEncoder`` (full-size ResNet18) for each crop, every case in its own
child process. A child first embeds one second of noise held in memory (imports,
kernels and allocator warmed up), notes its private memory (``RssAnon`` in
``/proc/self/status``: ``VmHWM`` would count shared library pages too), then
times ``embed_audio(encoder, path, crop=...)`` while a thread samples
``RssAnon`` every 2 ms. Reported: the call's seconds, the peak ``RssAnon`` and
the peak minus the warmed-up level (what the file cost).

``--source`` runs another checkout's code, e.g. the code before a change::

    git worktree add /tmp/base <revision>
    python benchmarks/audio_window.py --source /tmp/base --dir /tmp/audio-bench
    python benchmarks/audio_window.py --dir /tmp/audio-bench

(``--dir`` keeps the files for the next run; without it they are written to a
temporary folder and deleted at the end.) Linux only (``/proc``).

    python benchmarks/audio_window.py [--seconds 10 540 600 10800]
        [--crops start center random] [--threads 1] [--source PATH] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RATE = 44100

CHILD = r"""
import json, sys, threading, time

source, path, crop, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
sys.path.insert(0, source)


def rss_anon_kib():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    raise RuntimeError("no RssAnon in /proc/self/status")


import torch

torch.set_num_threads(threads)
from soundguide.core.errors import SoundguideError
from soundguide.encoders.soundclip import SoundCLIPEncoder, embed_audio

torch.manual_seed(0)
encoder = SoundCLIPEncoder().eval()
embed_audio(encoder, 0.1 * torch.randn(44100, generator=torch.Generator().manual_seed(0)))
baseline = rss_anon_kib()
peak = [baseline]
done = threading.Event()


def sample():
    while not done.is_set():
        peak[0] = max(peak[0], rss_anon_kib())
        time.sleep(0.002)


sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
error = None
tic = time.perf_counter()
try:
    embed_audio(encoder, path, crop=crop, generator=torch.Generator().manual_seed(0))
except SoundguideError as exc:
    error = str(exc)
seconds = time.perf_counter() - tic
done.set()
sampler.join()
peak[0] = max(peak[0], rss_anon_kib())
print(json.dumps({"seconds": seconds, "baseline_kib": baseline, "peak_kib": peak[0],
                  "error": error}))
"""


def write_wav(path: Path, seconds: int) -> None:
    """A tone swelling and fading over noise, written a minute at a time (16-bit PCM)."""
    import numpy as np
    import soundfile as sf

    expected = 44 + 2 * seconds * RATE  # a canonical header and the samples
    if path.is_file() and path.stat().st_size == expected:
        return
    rng = np.random.default_rng(0)
    with sf.SoundFile(str(path), "w", RATE, 1, "PCM_16") as fh:
        for begin in range(0, seconds, 60):
            t = np.arange(begin * RATE, min(begin + 60, seconds) * RATE) / RATE
            y = 0.3 * np.sin(2 * np.pi * 440 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 0.1 * t))
            y += 0.05 * rng.standard_normal(t.size)
            fh.write(y.astype(np.float32))


def run_case(source: Path, path: Path, crop: str, threads: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(source), str(path), crop, str(threads)],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        tail = out.stderr.strip().splitlines()[-1:] or ["no output"]
        return {"error": f"child failed: {tail[0]}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def length(seconds: int) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:g} h"
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, nargs="+", default=[10, 540, 600, 10800])
    parser.add_argument("--crops", nargs="+", default=["start", "center", "random"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads per child")
    parser.add_argument("--source", type=Path, default=ROOT, help="checkout whose code runs")
    parser.add_argument("--dir", type=Path, help="keep the WAV files here (default: temporary)")
    args = parser.parse_args()

    temporary = None
    if args.dir is None:
        temporary = tempfile.TemporaryDirectory(prefix="audio-window-")
        folder = Path(temporary.name)
    else:
        folder = args.dir
        folder.mkdir(parents=True, exist_ok=True)
    try:
        print(f"code: {args.source.resolve()}; torch threads per child: {args.threads}")
        print(
            f"{'file':>8} {'size':>9} {'crop':>7} {'seconds':>8} {'peak RssAnon':>13} "
            f"{'+ over warm':>12}"
        )
        for seconds in args.seconds:
            path = folder / f"{seconds}s.wav"
            write_wav(path, seconds)
            size = f"{path.stat().st_size / 2**20:.0f} MiB"
            for crop in args.crops:
                r = run_case(args.source.resolve(), path, crop, args.threads)
                if r.get("error") and "peak_kib" not in r:
                    print(f"{length(seconds):>8} {size:>9} {crop:>7}  {r['error']}")
                    continue
                peak, extra = r["peak_kib"] / 1024, (r["peak_kib"] - r["baseline_kib"]) / 1024
                note = f"  refused: {r['error'][:90]}" if r["error"] else ""
                print(
                    f"{length(seconds):>8} {size:>9} {crop:>7} {r['seconds']:8.2f} "
                    f"{peak:10.0f} MiB {extra:8.0f} MiB{note}",
                    flush=True,
                )
            if temporary is not None:
                path.unlink()  # the 3-hour file is about 950 MB
    finally:
        if temporary is not None:
            temporary.cleanup()


if __name__ == "__main__":
    main()
