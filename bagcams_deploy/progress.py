"""Progress for long runs: a rich bar with images/s and time left on a terminal; on anything else
(a log file, ``nohup``, a batch job, CI) a plain line on stderr every :data:`LOG_INTERVAL` seconds
with the count, the rate and the time left, so a 50,000-image run shows that it is alive and when it
will end. A run that ends within the interval prints nothing, so short runs keep stderr clean."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

#: Seconds between two plain progress lines when stderr is not a terminal.
LOG_INTERVAL = 30.0


class RateColumn(ProgressColumn):
    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:  # type: ignore[override]
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.1f} {self.unit}/s" if speed else f"- {self.unit}/s", style="progress.data.speed")


def _duration(seconds: float) -> str:
    """``42s``, ``17m03s``, ``2h05m``: a time left at a glance."""
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def progress_line(description: str, done: int, total: int, elapsed: float, unit: str = "img") -> str:
    """``localizing: 1,200/50,000 (2.4%), 48.1 img/s, 16m54s left``: one plain progress line."""
    rate = done / elapsed if elapsed > 0 else 0.0
    left = f", {_duration((total - done) / rate)} left" if rate > 0 and done < total else ""
    return f"{description}: {done:,}/{total:,} ({100.0 * done / max(total, 1):.1f}%), {rate:.1f} {unit}/s{left}"


def _log_lines(
    total: int, description: str, unit: str, interval: float, clock: Callable[[], float]
) -> Callable[[int], None]:
    """``advance(n)`` that writes a :func:`progress_line` to stderr at most once per ``interval``."""
    start = clock()
    state = {"done": 0, "last": start}

    def advance(n: int = 1) -> None:
        state["done"] += n
        now = clock()
        if now - state["last"] >= interval:
            state["last"] = now
            print(progress_line(description, state["done"], total, now - start, unit), file=sys.stderr, flush=True)

    return advance


@contextmanager
def progress_bar(
    total: int,
    description: str,
    unit: str = "img",
    enabled: bool | None = None,
    interval: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator:
    """Yield ``advance(n)``; draws on stderr (so stdout stays clean for tables and JSON): a bar on a
    terminal, else a plain line every ``interval`` seconds (default :data:`LOG_INTERVAL`).
    ``enabled=False`` shows nothing; ``enabled=True`` draws the bar even off a terminal."""
    console = Console(stderr=True)
    if enabled is False or (enabled is None and total <= 1):
        yield lambda n=1: None
        return
    if enabled is None and not console.is_terminal:
        yield _log_lines(total, description, unit, LOG_INTERVAL if interval is None else interval, clock)
        return
    cols = [
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(unit),
        TimeRemainingColumn(),
    ]
    with Progress(*cols, console=console, transient=False) as prog:
        task = prog.add_task(description, total=total)
        yield lambda n=1: prog.advance(task, n)
    sys.stderr.flush()
