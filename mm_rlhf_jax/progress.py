"""Progress of a long host pass: a tqdm bar on a terminal, periodic log lines elsewhere.

    with Progress(total=len(pairs), desc="score", unit="pairs", initial=done) as bar:
        for batch in batches:
            ...
            bar.update(len(batch))

On a TTY (stderr) this is tqdm. In a log file or under a job scheduler a tqdm
bar is a stream of carriage returns, so there one line is logged each
`every` of the total (default 10%), or every `interval_s` seconds when the
total is unknown, each with the rate of this process (items done before a
resume are not counted in it) and the time left:

    score: 3000/120000 pairs (2.5%), 41.3 pairs/s, 47m10s left

Only process 0 reports (every process runs the same pass); `enabled=False`
silences it (tests, nested passes).
"""

import logging
import sys
import time

try:  # tqdm is a dependency of the package; the periodic lines work without it
    from tqdm import tqdm
except ImportError:  # pragma: no cover
    tqdm = None


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Progress:
    """update(n) / set_postfix(dict) / close(); see the module docstring.

    Args:
      total: items the pass covers (None: unknown).
      desc / unit: the line's label and item name.
      initial: items already done (a resumed pass).
      enabled: report at all (None: on process 0 only).
      tty: force the bar (True) or the lines (False); None: whether stderr is a terminal.
      every: fraction of the total between two log lines.
      interval_s: seconds between two log lines when the total is unknown.
    """

    def __init__(self, total: int | None, desc: str, unit: str = "items", *, initial: int = 0,
                 enabled: bool | None = None, tty: bool | None = None, every: float = 0.1,
                 interval_s: float = 60.0):
        if enabled is None:
            import jax

            enabled = jax.process_index() == 0
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.enabled, self.every, self.interval_s = enabled, every, interval_s
        self._start_n, self._t0 = initial, time.monotonic()
        self._postfix: dict = {}
        tty = sys.stderr.isatty() if tty is None else tty
        self._bar = None
        if enabled and tty and tqdm is not None:
            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=f" {unit}", dynamic_ncols=True)
        self._next_mark = self._mark_after(initial)
        self._last_line = self._t0
        self.lines: list[str] = []  # the log lines written (tests read them)
        self._logged_n = initial

    def _mark_after(self, n: int) -> float:
        if not self.total:
            return float("inf")
        step = max(1.0, self.every * self.total)
        return (n // step + 1) * step

    @property
    def rate(self) -> float:
        """Items per second since this process started (a resumed count excluded)."""
        return (self.n - self._start_n) / max(time.monotonic() - self._t0, 1e-9)

    def line(self) -> str:
        rate = self.rate
        done = f"{self.n}/{self.total} {self.unit} ({100 * self.n / self.total:.1f}%)" if self.total else \
            f"{self.n} {self.unit}"
        out = f"{self.desc}: {done}, {rate:.3g} {self.unit}/s"
        if self.total and rate > 0 and self.n < self.total:
            out += f", {_duration((self.total - self.n) / rate)} left"
        if self._postfix:
            out += ", " + ", ".join(f"{k}={v}" for k, v in self._postfix.items())
        return out

    def _log(self) -> None:
        text = self.line()
        self.lines.append(text)
        self._logged_n = self.n
        logging.info("%s", text)
        self._last_line = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.n += n
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            return
        if self.n >= self._next_mark or (
                not self.total and time.monotonic() - self._last_line >= self.interval_s):
            self._next_mark = self._mark_after(self.n)
            self._log()

    def set_postfix(self, values: dict) -> None:
        self._postfix = dict(values)
        if self._bar is not None:
            self._bar.set_postfix(values)

    def close(self) -> None:
        """Ends the bar; on the lines path, a last line unless the last update just wrote one."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.n != self._logged_n:
            self._log()
        self.enabled = False  # closing twice writes nothing more

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
