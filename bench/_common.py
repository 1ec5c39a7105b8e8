"""Helpers the benchmarks share: timing by medians, round-robin interleaving, a plain-text table."""
import gc
import os
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # `python bench/x.py` from anywhere uses this fairnb

import torch  # noqa: E402

if os.environ.get('FAIRNB_BENCH_THREADS'):   # e.g. 1 on a machine shared with other work: see README
    torch.set_num_threads(int(os.environ['FAIRNB_BENCH_THREADS']))


def median_time(fn, repeats:int=3, warmup:int=0):
    "(median seconds, last result) of `repeats` calls of `fn`, after `warmup` untimed calls."
    for _ in range(warmup): fn()
    times, out = [], None
    for _ in range(repeats):
        gc.collect()
        t = time.perf_counter(); out = fn(); times.append(time.perf_counter() - t)
    return statistics.median(times), out


def interleaved(fns:dict, repeats:int=3, warmup:int=0):
    "(name -> median seconds, name -> last result): `fns` timed in rounds, one call each per round (fair to load)."
    for fn in fns.values():
        for _ in range(warmup): fn()
    times, outs = {k: [] for k in fns}, {}
    for _ in range(repeats):
        for k, fn in fns.items():
            gc.collect()
            t = time.perf_counter(); outs[k] = fn(); times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}, outs


class PeakRSS:
    "Context manager: the peak resident memory above the level at entry (bytes), sampled every `every` seconds."
    def __init__(self, every:float=0.002): self.every, self.peak = every, 0
    def __enter__(self):
        import psutil
        self.proc, self.stop = psutil.Process(os.getpid()), threading.Event()
        gc.collect(); self.base = self.proc.memory_info().rss
        self.thread = threading.Thread(target=self._sample, daemon=True); self.thread.start()
        return self
    def _sample(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss - self.base); time.sleep(self.every)
    def __exit__(self, *exc):
        self.stop.set(); self.thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss - self.base)


def table(rows:list, columns:list, formats:dict|None=None):
    "Print `rows` (dicts) as an aligned text table; `formats` maps a column to a format spec such as '.3f'."
    formats = formats or {}
    cell = lambda r, c: '' if r.get(c) is None else (format(r[c], formats[c]) if c in formats and
                                                     not isinstance(r[c], str) else str(r[c]))
    cells = [[cell(r, c) for c in columns] for r in rows]
    width = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(columns)]
    line = lambda xs: '  '.join(x.ljust(w) if i == 0 else x.rjust(w) for i, (x, w) in enumerate(zip(xs, width)))
    print(line(columns)); print(line(['-' * w for w in width]))
    for x in cells: print(line(x))


def threads_note():
    "One line on the threads torch uses: the figures depend on it."
    return f'torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores'
