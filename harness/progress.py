"""Progress bars for long work, drawn with rich on a terminal and silent elsewhere (logs, CI, pipes)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class RichProgress:
    """Implements methods.base.Progress: ``with progress("what", total) as advance: advance(1)``."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self._bars = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
            disable=not self.console.is_terminal,
        )
        self._depth = 0  # bars of nested work share one live display

    @contextmanager
    def __call__(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        if self._depth == 0:
            self._bars.start()
        self._depth += 1
        task = self._bars.add_task(description, total=total)
        try:
            yield lambda n=1: self._bars.advance(task, n)
        finally:
            self._depth -= 1
            if self._depth == 0:
                self._bars.stop()
