"""Progress that fits where it is shown.

On a terminal a bar redraws in place; in a file or a scheduler's log viewer (Databricks, a
spark-submit log, `make demo > demo.log`) every redraw is another carriage-return fragment, hundreds
per epoch. So a bar is drawn only when stderr is a terminal; anywhere else progress is one plain
`logging` line at most every `interval` seconds, with the rate and the time left when the total is
known. Spark's console progress bar follows the same rule (`console_progress`, nextplay/spark.py).
"""
from __future__ import annotations

import logging
import sys
import time
from typing import Any, Iterable, Iterator

log = logging.getLogger("nextplay.progress")

INTERVAL_SECONDS = 30.0


def on_terminal() -> bool:
    """Whether stderr is an interactive terminal (where a redrawn bar reads well)."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def console_progress() -> str:
    """`spark.ui.showConsoleProgress` for this process: Spark's stage bar on a terminal only."""
    return "true" if on_terminal() else "false"


class LineProgress:
    """An iterable that logs `desc: n/total (p%), rate/s, ETA` every `interval` seconds and once at the
    end; `set_postfix` adds figures (e.g. the running loss) to the next line, as tqdm's does to its bar."""

    def __init__(self, iterable: Iterable[Any], total: int | None, desc: str, unit: str = "it",
                 interval: float = INTERVAL_SECONDS) -> None:
        self.iterable, self.total, self.desc, self.unit, self.interval = iterable, total, desc, unit, interval
        self.n, self.postfix = 0, ""
        self.started = self.last = time.monotonic()

    def set_postfix(self, **figures: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in figures.items())

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.n / elapsed
        parts = [f"{self.desc}: {self.n}" + (f"/{self.total} ({100 * self.n / self.total:.0f}%)" if self.total else ""),
                 f"{rate:.1f} {self.unit}/s"]
        if self.total and rate > 0 and self.n < self.total:
            parts.append(f"ETA {(self.total - self.n) / rate:.0f}s")
        if self.postfix:
            parts.append(self.postfix)
        return ", ".join(parts)

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable:
            yield item
            self.n += 1
            now = time.monotonic()
            if now - self.last >= self.interval:
                self.last = now
                log.info(self.line())

    def close(self) -> None:
        log.info(self.line() + f", done in {time.monotonic() - self.started:.0f}s")


class _Silent(LineProgress):
    def __iter__(self) -> Iterator[Any]:
        yield from self.iterable

    def close(self) -> None:
        pass


def progress(iterable: Iterable[Any], total: int | None, desc: str, enabled: bool = True, unit: str = "it") -> Any:
    """A tqdm bar on a terminal, `LineProgress` elsewhere, nothing when not `enabled`; all three
    iterate `iterable` and take `set_postfix` and `close`."""
    if not enabled:
        return _Silent(iterable, total, desc, unit)
    if on_terminal():
        from tqdm import tqdm  # deferred: only a terminal draws a bar

        return tqdm(iterable, total=total, desc=desc, unit=unit, mininterval=2.0, leave=False)
    return LineProgress(iterable, total, desc, unit)
