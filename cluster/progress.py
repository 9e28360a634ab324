"""Progress bars and the end-of-run table (rich)."""

from __future__ import annotations

import time
from typing import Callable, Sequence

import ray
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.table import Table

console = Console(stderr=True)


class RateColumn(TextColumn):
    """Completed units per second, e.g. `12,345 rows/s`."""

    def __init__(self, unit: str) -> None:
        super().__init__("")
        self.unit = unit

    def render(self, task):  # type: ignore[override]
        speed = task.finished_speed or task.speed
        return f"{speed:,.0f} {self.unit}/s" if speed else f"- {self.unit}/s"


def progress_bar(unit: str) -> Progress:
    return Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    RateColumn(unit), TimeElapsedColumn(), TimeRemainingColumn(), console=console,
                    transient=False)


def wait_with_progress(refs: Sequence[ray.ObjectRef], description: str, unit: str, total: int,
                       poll: Callable[[], int], timeout_s: float, interval_s: float = 0.5) -> list:
    """Block on `refs` while a bar shows `poll()` (units done so far) out of `total`.

    Raises GetTimeoutError when the refs are not done within `timeout_s`.
    """
    deadline = time.monotonic() + timeout_s
    pending = list(refs)
    with progress_bar(unit) as progress:
        task = progress.add_task(description, total=total)
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ray.exceptions.GetTimeoutError(f"{description}: not done within {timeout_s:.0f}s")
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=min(interval_s, remaining))
            progress.update(task, completed=min(poll(), total))
        progress.update(task, completed=total)
    return ray.get(list(refs))


def summary_table(title: str, rows: list[tuple[str, str]]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value")
    for key, value in rows:
        table.add_row(key, value)
    return table
