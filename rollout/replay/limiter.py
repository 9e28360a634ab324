"""Rate limiters decide when sampling may proceed."""

from __future__ import annotations


class MinSize:
    """Sampling waits until the shard holds at least `min_size` rows."""

    def __init__(self, min_size: int) -> None:
        self.min_size = min_size

    def can_sample(self, size: int) -> bool:
        return size >= self.min_size
