"""Progress with an estimated time to completion for long loops (COCO evaluation)."""
import datetime
import logging
import threading
import time

__all__ = ["ProgressETA"]


def _duration(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(round(seconds))))


class ProgressETA:
    """Counts the steps of a loop of known length and logs, for loops that run long, how far it
    is, the time spent and the estimated time left (linear in the steps done).

    The first line comes after ``first_after`` seconds, then one every ``every`` seconds, so a
    loop that ends sooner logs nothing. ``step`` may be called from several threads.

    Args:
        total (int): the number of steps (>= 0).
        description (str): what is counted, e.g. "COCO segm evaluation, IoUs (image x category)".
        logger (logging.Logger): where the lines go (INFO); default: this module's logger.
        first_after, every (float): seconds.
        clock (callable): returns seconds (for tests); default ``time.perf_counter``.
    """

    def __init__(self, total, description, *, logger=None, first_after=5.0, every=10.0,
                 clock=time.perf_counter):
        if total < 0:
            raise ValueError(f"total must be >= 0, got {total}")
        self.total = int(total)
        self.description = description
        self.logger = logger or logging.getLogger(__name__)
        self.every = every
        self.clock = clock
        self.done = 0
        self.lines = 0  # lines logged so far
        self._start = clock()
        self._next_report = self._start + first_after
        self._lock = threading.Lock()

    def elapsed(self) -> float:
        return self.clock() - self._start

    def eta(self) -> float:
        """Seconds left, estimated from the rate so far (inf before the first step)."""
        if self.done <= 0:
            return float("inf")
        return self.elapsed() / self.done * max(self.total - self.done, 0)

    def message(self) -> str:
        percent = 100.0 * self.done / self.total if self.total else 100.0
        eta = self.eta()
        return (f"{self.description}: {self.done}/{self.total} ({percent:.0f}%), "
                f"{_duration(self.elapsed())} elapsed, ETA {_duration(eta) if eta != float('inf') else '?'}")

    def step(self, n=1):
        """Counts ``n`` more steps done; logs a line when one is due."""
        with self._lock:
            self.done += n
            now = self.clock()
            if now < self._next_report:
                return
            self._next_report = now + self.every
            self.lines += 1
        self.logger.info(self.message())
