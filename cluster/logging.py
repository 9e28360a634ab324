"""What a person sees of a run: loguru lines (stderr and the run's log file) and rich progress
bars with rates, and the end-of-run table.

This module imports nothing from Harvest: every package may use it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence, Sized, TypeVar

from loguru import logger
from rich.console import Console
from rich.errors import LiveError
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

if TYPE_CHECKING:
    import ray

_FORMAT = "<green>{time:HH:mm:ss}</green> <level>{level: <7}</level> <cyan>{extra[actor]}</cyan> {message}"


class _Stderr:
    """Whatever `sys.stderr` is when a line is written: a driver that outlives its stderr (an
    in-process `harvest` call under pytest's capture, a notebook) keeps logging to the current one."""

    def write(self, message: str) -> None:
        sys.stderr.write(message)

    def flush(self) -> None:
        sys.stderr.flush()


def setup_logging(level: str = "INFO", log_file: Path | None = None) -> None:
    """Log to stderr at `level`, and everything from DEBUG up to `log_file` when given."""
    logger.remove()
    logger.configure(extra={"actor": "driver"})
    logger.add(_Stderr(), level=level, format=_FORMAT, colorize=sys.stderr.isatty())
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        logger.add(log_file, level="DEBUG", format=_FORMAT, colorize=False)


def setup_worker_logging() -> None:
    """Ray `worker_process_setup_hook`: short loguru lines in actors (Ray prefixes the actor and pid)."""
    logger.remove()
    logger.configure(extra={"actor": ""})
    logger.add(sys.stderr, level="INFO", format="{time:HH:mm:ss} {level: <7} {extra[actor]} {message}", colorize=False)


console = Console(stderr=True)
Item = TypeVar("Item")


class RateColumn(TextColumn):
    """Completed units per second, e.g. `12,345 rows/s`."""

    def __init__(self, unit: str) -> None:
        super().__init__("")
        self.unit = unit

    def render(self, task):
        speed = task.finished_speed or task.speed
        seconds = task.finished_time or task.elapsed
        if not speed and task.completed and seconds:  # (rich estimates from several updates; a few big ones give none)
            speed = task.completed / seconds
        return f"{speed:,.0f} {self.unit}/s" if speed else f"- {self.unit}/s"


def progress_bar(unit: str) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(unit),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def track(
    items: Iterable[Item],
    description: str,
    unit: str,
    total: int | None = None,
    size: Callable[[Item], int] = lambda item: 1,
) -> Iterator[Item]:
    """`items`, each counted (`size(item)` units: rows of a batch, 1 for a file) on a bar with
    its rate once the caller is done with it. Where another bar is already showing (one live
    display at a time), the items come without a bar of their own."""
    if total is None and isinstance(items, Sized):
        total = len(items)
    bar = progress_bar(unit)
    try:
        bar.start()
    except LiveError:
        yield from items
        return
    try:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task, size(item))
        if total is None or bar.tasks[0].completed < total:  # (fewer than announced: a filter, left-out files)
            bar.update(task, total=bar.tasks[0].completed)
    finally:
        bar.stop()


def column_rows(columns: dict) -> int:
    """Rows in a dict of columns (`size` for `track` over column batches or episodes)."""
    return len(next(iter(columns.values()))) if columns else 0


def wait_with_progress(
    refs: Sequence["ray.ObjectRef"],
    description: str,
    unit: str,
    total: int,
    poll: Callable[[], int],
    timeout_s: float,
    interval_s: float = 0.5,
) -> list:
    """Block on `refs` while a bar shows `poll()` (units done so far) out of `total`.

    Raises GetTimeoutError when the refs are not done within `timeout_s`.
    """
    import ray

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
