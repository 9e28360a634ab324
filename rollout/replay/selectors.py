"""Selectors pick which stored rows `ReplayShard.sample` returns (`replay.sampler`).

    uniform      every stored row equally likely, with replacement
    prioritized  proportional prioritized replay (Schaul et al., 2016): P(i) = p_i^α / Σ p^α,
                 new rows at the largest priority so far, `update_priorities` from TD errors
    fifo         a queue: the oldest rows not sampled yet, each at most once
    lifo         a stack: the newest rows not sampled yet, each at most once

A selector sees ring slots: `evicted(slots)` for rows dropped to keep a byte budget,
`inserted(slots)` after rows are stored (overwriting older ones), `select(...)` to draw.
Probabilities are returned with the slots (1 for fifo/lifo).
"""

from __future__ import annotations

import numpy as np

from harvest.rollout.replay.sum_tree import SumTree


class Uniform:
    """Every stored row equally likely, with replacement."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity

    def row_state(self, slots: np.ndarray) -> dict[str, np.ndarray]:
        """Per-row state to checkpoint (aligned with `slots`)."""
        return {}

    def scalar_state(self) -> dict:
        return {}

    def restore(self, slots: np.ndarray, rows: dict[str, np.ndarray], scalars: dict) -> None:
        pass

    def inserted(self, slots: np.ndarray) -> None:
        pass

    def evicted(self, slots: np.ndarray) -> None:
        pass

    @property
    def nbytes(self) -> int:
        """Memory the selector's own state takes (sum tree, taken flags)."""
        return 0

    def mass(self, oldest_seq: int, next_seq: int) -> float:
        return float(next_seq - oldest_seq)

    def select(
        self, num_rows: int, rng: np.random.Generator, oldest_seq: int, next_seq: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """`num_rows` slots of stored rows (sequence numbers [oldest_seq, next_seq)) and their probabilities."""
        size = next_seq - oldest_seq
        slots = (oldest_seq + rng.integers(0, size, size=num_rows)) % self.capacity
        return slots, np.full(num_rows, 1.0 / max(size, 1))


class Prioritized(Uniform):
    """Proportional prioritized sampling over a sum-tree of p_i^α (stratified draws)."""

    def row_state(self, slots: np.ndarray) -> dict[str, np.ndarray]:
        return {"priority": self.tree.get(slots)}

    def scalar_state(self) -> dict:
        return {"max_priority": self.max_priority}

    def restore(self, slots: np.ndarray, rows: dict[str, np.ndarray], scalars: dict) -> None:
        self.tree.update(slots, rows["priority"])
        self.max_priority = scalars["max_priority"]

    def __init__(self, capacity: int, alpha: float, eps: float) -> None:
        super().__init__(capacity)
        self.alpha, self.eps = alpha, eps
        self.tree = SumTree(capacity)
        self.max_priority = 1.0

    def inserted(self, slots: np.ndarray) -> None:
        self.tree.update(slots, self.max_priority**self.alpha)

    def evicted(self, slots: np.ndarray) -> None:
        self.tree.update(slots, 0.0)

    @property
    def nbytes(self) -> int:
        return self.tree.nbytes

    def mass(self, oldest_seq: int, next_seq: int) -> float:
        return self.tree.total

    def select(
        self, num_rows: int, rng: np.random.Generator, oldest_seq: int, next_seq: int
    ) -> tuple[np.ndarray, np.ndarray]:
        total = self.tree.total
        targets = (np.arange(num_rows) + rng.random(num_rows)) * (total / num_rows)
        slots = self.tree.find(targets)
        return slots, self.tree.get(slots) / total

    def update(self, slots: np.ndarray, td_errors: np.ndarray) -> None:
        priorities = np.abs(np.asarray(td_errors, np.float64)) + self.eps
        if not np.isfinite(priorities).all():
            raise ValueError("update_priorities: TD errors must be finite")
        self.tree.update(slots, priorities**self.alpha)
        self.max_priority = max(self.max_priority, float(priorities.max(initial=0.0)))


class Queue(Uniform):
    """FIFO (`newest_first=False`) or LIFO reads: each stored row is returned at most once."""

    def row_state(self, slots: np.ndarray) -> dict[str, np.ndarray]:
        return {"taken": self.taken[slots]}

    def restore(self, slots: np.ndarray, rows: dict[str, np.ndarray], scalars: dict) -> None:
        self.taken[slots] = rows["taken"]

    def __init__(self, capacity: int, newest_first: bool) -> None:
        super().__init__(capacity)
        self.newest_first = newest_first
        self.taken = np.zeros(capacity, bool)

    def inserted(self, slots: np.ndarray) -> None:
        self.taken[slots] = False

    @property
    def nbytes(self) -> int:
        return self.taken.nbytes

    def mass(self, oldest_seq: int, next_seq: int) -> float:
        slots = np.arange(oldest_seq, next_seq) % self.capacity
        return float(slots.size - self.taken[slots].sum())

    def select(
        self, num_rows: int, rng: np.random.Generator, oldest_seq: int, next_seq: int
    ) -> tuple[np.ndarray, np.ndarray]:
        seqs: np.ndarray = np.arange(oldest_seq, next_seq)
        if self.newest_first:
            seqs = seqs[::-1]
        slots = seqs % self.capacity
        chosen = slots[~self.taken[slots]][:num_rows]
        self.taken[chosen] = True
        return chosen, np.ones(chosen.size)


def make_selector(name: str, capacity: int, alpha: float = 0.6, eps: float = 1e-6) -> Uniform | Prioritized | Queue:
    """The selector named by `replay.sampler`."""
    if name == "uniform":
        return Uniform(capacity)
    if name == "prioritized":
        return Prioritized(capacity, alpha, eps)
    if name in ("fifo", "lifo"):
        return Queue(capacity, newest_first=name == "lifo")
    raise ValueError(f"replay.sampler: {name!r} is not a known sampler; expected uniform, prioritized, fifo or lifo")
