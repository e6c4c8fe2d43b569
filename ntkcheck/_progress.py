"""A one-line progress report on stderr (count, rate, ETA) for long kernel computations."""

from __future__ import annotations

import sys
import time
from types import TracebackType


class Progress:
    """Counts work done toward ``total`` and redraws one stderr line, at most twice a second;
    ``note`` adds what the current unit of work is doing (e.g. a training step)."""

    def __init__(self, total: int, unit: str, *, enabled: bool = True) -> None:
        self.total, self.unit, self.enabled = total, unit, enabled
        self.done = 0
        self.shown = False
        self._start = self._drawn = time.perf_counter()
        self._note = ""
        self._width = 0  # of the line last drawn, so a shorter one blanks what it leaves

    def __enter__(self) -> Progress:
        return self

    def advance(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if self.enabled and (now - self._drawn >= 0.5 or (n and self.done >= self.total)):
            self._drawn = now
            self._draw(now)

    def note(self, text: str) -> None:
        """Show ``text`` after the count until the next note (``""`` clears it)."""
        self._note = text
        self.advance(0)

    def _draw(self, now: float) -> None:
        self.shown = True
        elapsed = now - self._start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = f"{(self.total - self.done) / rate:,.0f}s" if rate > 0 else "?"
        line = (f"{self.unit}: {self.done}/{self.total}  {rate:,.1f}/s  "
                f"elapsed {elapsed:,.0f}s  ETA {eta} {self._note}")
        sys.stderr.write(f"\r{line:<{self._width}}")
        self._width = len(line)
        sys.stderr.flush()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.shown:  # end the line drawn; an empty job (nothing to do) drew none
            sys.stderr.write("\n")
