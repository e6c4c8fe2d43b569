"""A one-line progress report on stderr (count, rate, ETA) for long kernel computations."""

from __future__ import annotations

import sys
import time
from types import TracebackType


class Progress:
    """Counts work done toward ``total`` and redraws one stderr line, at most twice a second."""

    def __init__(self, total: int, unit: str, *, enabled: bool = True) -> None:
        self.total, self.unit, self.enabled = total, unit, enabled
        self.done = 0
        self.shown = False
        self._start = self._drawn = time.perf_counter()

    def __enter__(self) -> Progress:
        return self

    def advance(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if self.enabled and (now - self._drawn >= 0.5 or self.done >= self.total):
            self._drawn = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        self.shown = True
        elapsed = now - self._start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        sys.stderr.write(
            f"\r{self.unit}: {self.done}/{self.total}  {rate:,.1f}/s  "
            f"elapsed {elapsed:,.0f}s  ETA {eta:,.0f}s "
        )
        sys.stderr.flush()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.shown:  # end the line drawn; an empty job (nothing to do) drew none
            sys.stderr.write("\n")
