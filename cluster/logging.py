"""Loguru setup for the driver: readable lines on stderr and a log file in the run folder.

This module imports nothing from Harvest.
"""

from __future__ import annotations

import sys
from pathlib import Path

from loguru import logger

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
    logger.add(sys.stderr, level="INFO", format="{time:HH:mm:ss} {level: <7} {extra[actor]} {message}",
               colorize=False)
