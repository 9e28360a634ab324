"""Waiting in tests: for the event a test checks (a state, a file, a log line, a counter), with a
generous ceiling for a busy machine - never a fixed sleep followed by an assertion."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout_s: float, what: str, poll_s: float = 0.1) -> T:
    """Poll `predicate` until it returns something true, and return that.

    Raises:
        AssertionError: naming `what`, when `timeout_s` passed without it.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(poll_s)
