"""`ChangeSignal`: how a shard actor's waiting inserts, samples and reads learn that it changed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class ChangeSignal:
    """An asyncio condition in the actor's event loop: coroutines wait until a predicate holds,
    and every change to the shard wakes them to look again. Made on first use, in the loop
    that waits; outside an event loop nothing waits, so `notify` does nothing."""

    def __init__(self) -> None:
        self._changed: asyncio.Condition | None = None

    async def wait_until(self, ready: Callable[[], bool], timeout_s: float) -> bool:
        """Wait (in the actor's event loop) until `ready()`; False after `timeout_s`."""
        if ready():
            return True
        if self._changed is None:
            self._changed = asyncio.Condition()
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(ready), timeout_s)
            except asyncio.TimeoutError:
                return False
        return True

    def notify(self) -> None:
        """Wake waiting inserts and samples (in the actor's event loop; nothing waits elsewhere)."""
        if self._changed is not None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            changed = self._changed

            async def wake() -> None:
                async with changed:
                    changed.notify_all()

            loop.create_task(wake())
