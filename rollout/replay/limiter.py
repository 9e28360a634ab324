"""Rate limiters decide when inserting and sampling may proceed (`replay.rate_limit`)."""

from __future__ import annotations


class RateLimited(TimeoutError):
    """An insert or a sample waited longer than its timeout for the rate limiter."""


class MinSize:
    """Sampling waits until the shard holds at least `min_size` rows; inserts never wait."""

    def __init__(self, min_size: int) -> None:
        self.min_size = min_size
        self.inserted = 0
        self.sampled = 0

    def can_insert(self) -> bool:
        return True

    def can_sample(self, size: int) -> bool:
        return size >= self.min_size

    def on_insert(self, num_rows: int) -> None:
        self.inserted += num_rows

    def on_sample(self, num_rows: int) -> None:
        self.sampled += num_rows

    def describe(self) -> str:
        return f"min size {self.min_size}"


class SampleToInsertRatio(MinSize):
    """Keeps samples per inserted row near `samples_per_insert`, as Reverb's limiter of that name.

    With `diff = inserted x samples_per_insert - sampled`, inserts wait while diff is above
    `min_size x spi + error_buffer` (the learners are behind) and samples wait while diff is
    below `min_size x spi - error_buffer` (the collectors are behind) or fewer than `min_size`
    rows are stored. A batch is let through whole once its first row may go, so a batch may
    overshoot the window by its own size.
    """

    def __init__(self, samples_per_insert: float, min_size: int, error_buffer: float) -> None:
        super().__init__(min_size)
        if samples_per_insert <= 0:
            raise ValueError(f"replay.rate_limit.samples_per_insert={samples_per_insert}: expected > 0")
        if error_buffer < max(1.0, samples_per_insert):
            raise ValueError(
                f"replay.rate_limit.error_buffer={error_buffer}: expected at least "
                f"max(1, samples_per_insert) = {max(1.0, samples_per_insert)}, or nothing could move"
            )
        self.samples_per_insert, self.error_buffer = samples_per_insert, error_buffer
        offset = samples_per_insert * min_size
        self.min_diff, self.max_diff = offset - error_buffer, offset + error_buffer

    @property
    def diff(self) -> float:
        return self.inserted * self.samples_per_insert - self.sampled

    def can_insert(self) -> bool:
        return self.inserted < self.min_size or self.diff <= self.max_diff

    def can_sample(self, size: int) -> bool:
        return size >= self.min_size and self.diff - 1 >= self.min_diff

    def describe(self) -> str:
        return (
            f"samples per insert {self.samples_per_insert:g} ± {self.error_buffer:g} (inserted {self.inserted}, "
            f"sampled {self.sampled}, min size {self.min_size})"
        )
