"""Private memory of this process, for the benchmarks: ``RssAnon`` of ``/proc/self/status``.

``RssAnon`` counts the pages the process owns (tensors, the heap); ``VmHWM``
(peak RSS) would also count shared library pages. :class:`PeakSampler` samples
it in a thread, since the kernel keeps no high-water mark of ``RssAnon``::

    sampler = PeakSampler(); sampler.start()
    ...                                    # the work
    sampler.running = False; sampler.join()
    print(sampler.peak / 1024, "MiB")

Linux only (elsewhere ``rss_anon_kib`` reads 0). Imported by the benchmark
scripts, which run with ``benchmarks/`` first on ``sys.path``.
"""

from __future__ import annotations

import threading
import time


def rss_anon_kib() -> int:
    """The process's private resident memory now, in KiB (0 where /proc is missing)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class PeakSampler(threading.Thread):
    """The highest ``RssAnon`` (KiB) seen while it runs, sampled every ``every`` seconds."""

    def __init__(self, every: float = 0.005) -> None:
        super().__init__(daemon=True)
        self.every = every
        self.peak = 0
        self.running = True

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, rss_anon_kib())
            time.sleep(self.every)
