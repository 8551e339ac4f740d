"""Progress bars for long work: done/total, generated tokens per second, ETA."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.text import Text

console = Console(stderr=True)


class _TokenRate(ProgressColumn):
    def render(self, task) -> Text:  # type: ignore[override]
        elapsed = task.elapsed or 0.0
        tokens = task.fields.get("tokens", 0)
        rate = tokens / elapsed if elapsed > 0 else 0.0
        return Text(f"{rate:,.0f} tok/s", style="cyan")


class GenProgress:
    """A progress bar over requests that also shows token throughput.

    Silent when ``description`` is None, so library calls stay quiet by default.

    Example:
        >>> with GenProgress("respond", total=100) as bar:
        ...     bar.advance(10, tokens=640)
    """

    def __init__(self, description: str | None, total: int, done: int = 0) -> None:
        self.enabled = description is not None
        self.tokens = 0
        self._depth = 0  # re-entrant: a stage may hold one bar open across many calls
        self.started = time.perf_counter()
        if self.enabled:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                _TokenRate(),
                TimeRemainingColumn(),
                console=console,
                transient=False,
            )
            self._task = self._progress.add_task(description or "", total=total + done, completed=done, tokens=0)

    def __enter__(self) -> "GenProgress":
        if self.enabled and self._depth == 0:
            self._progress.start()
        self._depth += 1
        return self

    def advance(self, n: int, tokens: int = 0) -> None:
        self.tokens += tokens
        if self.enabled:
            self._progress.update(self._task, advance=n, tokens=self.tokens)

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self.enabled and self._depth == 0:
            self._progress.stop()
