"""Start-up cost of ``import soundguide`` and of ``soundguide --help``, in fresh processes.

Each case runs ``--repeats`` times, each time in a new Python process; a thread
samples the process's private memory (``RssAnon`` in ``/proc/self/status``)
every millisecond, and the child prints the peak, the seconds from the
interpreter's start (``time.perf_counter`` against the process start time from
``/proc/self/stat``) and which heavy modules ended up imported. Reported: the
median seconds and the median peak ``RssAnon``.

``--source`` runs another checkout's code, e.g. the code before a change::

    git worktree add /tmp/base <revision>
    python benchmarks/cli_startup.py --source /tmp/base
    python benchmarks/cli_startup.py

Linux only (``/proc``).

    python benchmarks/cli_startup.py [--repeats 7] [--source PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CASES = {
    "import soundguide": "import soundguide",
    "soundguide --help": (
        "import contextlib, io\n"
        "from soundguide.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    code = main(['--help'])\n"
        "assert code == 0, code\n"
    ),
}

WATCHED = (
    "torch",
    "sklearn",
    "soundguide.training.trainer",
    "soundguide.training.config",
    "soundguide.evaluation.zeroshot",
    "torch.utils.tensorboard",
)

CHILD = r"""
import json, os, sys, threading, time

source, code, watched = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
sys.path.insert(0, source)


def rss_anon_kib():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    raise RuntimeError("no RssAnon in /proc/self/status")


def started_seconds_ago():
    with open("/proc/self/stat") as fh:
        ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime") as fh:
        uptime = float(fh.read().split()[0])
    return uptime - ticks / os.sysconf("SC_CLK_TCK")


peak = [rss_anon_kib()]
done = threading.Event()


def sample():
    while not done.wait(0.001):
        peak[0] = max(peak[0], rss_anon_kib())


thread = threading.Thread(target=sample, daemon=True)
thread.start()
exec(compile(code, "<case>", "exec"))
seconds = started_seconds_ago()
done.set()
thread.join()
peak[0] = max(peak[0], rss_anon_kib())
print(json.dumps({
    "seconds": seconds,
    "peak_rss_anon_mib": peak[0] / 1024,
    "imported": [m for m in watched if m in sys.modules],
    "soundguide": sys.modules["soundguide"].__file__,
}))
"""


def measure(source: Path, code: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(source), code, json.dumps(WATCHED)],
        capture_output=True,
        text=True,
        check=True,
        cwd=source,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--source", type=Path, default=ROOT, help="checkout whose code runs")
    args = parser.parse_args()
    source = args.source.resolve()
    print(f"code from {source}")
    for name, code in CASES.items():
        runs = [measure(source, code) for _ in range(args.repeats)]
        seconds = statistics.median(r["seconds"] for r in runs)
        memory = statistics.median(r["peak_rss_anon_mib"] for r in runs)
        print(
            f"{name:20s} {seconds:6.2f} s  peak RssAnon {memory:6.1f} MiB  "
            f"imports: {', '.join(runs[0]['imported']) or '-'}"
        )


if __name__ == "__main__":
    main()
