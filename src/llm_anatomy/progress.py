"""Progress of long steps: a tqdm bar on a terminal; elsewhere (Snakemake job logs, SLURM, nohup,
DVC) a log line every `interval` seconds with the count, the percentage, the time so far and an ETA.

tqdm hides itself when stderr is not a terminal, which left a job's log silent until the step
finished; these lines are what a researcher tailing a log sees instead.
"""
from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator

from tqdm.auto import tqdm

log = logging.getLogger(__name__)

INTERVAL_S = 30.0


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class LogProgress:
    """The log-line counterpart of a tqdm bar: `update`, `set_postfix`, `close`, iteration."""

    def __init__(self, iterable: Iterable | None = None, total: int | None = None, desc: str = "",
                 initial: int = 0, interval: float = INTERVAL_S, clock: Callable[[], float] = time.monotonic):
        self.iterable, self.desc, self.interval, self.clock = iterable, desc, interval, clock
        if total is None and hasattr(iterable, "__len__"):  # None has no length
            total = len(iterable)
        self.total, self.n, self.initial = total, initial, initial
        self.start = self.last = clock()
        self.postfix = ""

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __len__(self) -> int:
        return self.total or 0

    def set_postfix(self, refresh: bool = False, **values) -> None:
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        if now - self.last >= self.interval:
            self.last = now
            log.info(self.line(now))

    def line(self, now: float) -> str:
        elapsed = now - self.start
        done = self.n - self.initial  # a resumed bar estimates from this run's rate only
        text = f"{self.desc}: {self.n}"
        if self.total:
            text += f"/{self.total} ({100 * self.n / self.total:.0f}%)"
        text += f", {_clock(elapsed)} elapsed"
        if self.total and done > 0:
            text += f", ETA {_clock(elapsed / done * (self.total - self.n))}"
        return text + (f", {self.postfix}" if self.postfix else "")

    def close(self) -> None:
        pass


def progress(iterable: Iterable | None = None, total: int | None = None, desc: str | None = None,
             initial: int = 0, mininterval: float = 10, interval: float = INTERVAL_S):
    """A tqdm bar when stderr is a terminal, else a `LogProgress`; `desc=None`: no progress at all."""
    if desc is None:
        return tqdm(iterable, total=total, initial=initial, disable=True)
    if sys.stderr.isatty():
        return tqdm(iterable, total=total, initial=initial, desc=desc, mininterval=mininterval)
    return LogProgress(iterable, total=total, desc=desc, initial=initial, interval=interval)
