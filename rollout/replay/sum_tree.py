"""`SumTree`: priorities in a binary tree of partial sums, for proportional sampling.

Written by hand (numpy, batched): the peers' versions are bound to their storage (TorchRL's is
C++ over its own buffers, Reverb's lives in its server) and a ring slot here must map to a leaf.
"""

from __future__ import annotations

import numpy as np


class SumTree:
    """Non-negative values at `capacity` leaves; prefix-sum search in O(log capacity), batched.

    Every inner node holds the sum of its two children; updates recompute the touched parents
    level by level from their children, so sums never drift.

    Example:
        >>> tree = SumTree(4)
        >>> tree.update(np.array([0, 2]), np.array([1.0, 3.0]))
        >>> tree.total, tree.find(np.array([0.5, 1.5]))
        (4.0, array([0, 2]))
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity={capacity}: expected at least 1")
        self.capacity = capacity
        self._leaves = 1 << max(0, (capacity - 1).bit_length())
        self._tree = np.zeros(2 * self._leaves, np.float64)

    @property
    def total(self) -> float:
        return float(self._tree[1])

    def get(self, slots: np.ndarray) -> np.ndarray:
        return self._tree[np.asarray(slots, np.int64) + self._leaves]

    def update(self, slots: np.ndarray, values: np.ndarray) -> None:
        """Set the leaves `slots` (the last value wins for a repeated slot) and their ancestors."""
        slots = np.asarray(slots, np.int64)
        if slots.size == 0:
            return
        if slots.min() < 0 or slots.max() >= self.capacity:
            raise IndexError(f"SumTree: slots outside [0, {self.capacity})")
        values = np.broadcast_to(np.asarray(values, np.float64), slots.shape)
        if (values < 0).any() or not np.isfinite(values).all():
            raise ValueError("SumTree: values must be finite and non-negative")
        nodes = slots + self._leaves
        self._tree[nodes] = values
        nodes = np.unique(nodes >> 1)
        while nodes.size and nodes[-1] >= 1:
            self._tree[nodes] = self._tree[2 * nodes] + self._tree[2 * nodes + 1]
            if nodes[0] == 1:
                break
            nodes = np.unique(nodes >> 1)

    def find(self, targets: np.ndarray) -> np.ndarray:
        """For each target in [0, total), the leaf whose cumulative range holds it."""
        targets = np.minimum(np.asarray(targets, np.float64), np.nextafter(self.total, 0.0))
        nodes = np.ones(targets.shape, np.int64)
        while self._leaves > 1 and nodes.size and nodes[0] < self._leaves:
            left = 2 * nodes
            left_sum = self._tree[left]
            right = targets >= left_sum
            targets = np.where(right, targets - left_sum, targets)
            nodes = np.where(right, left + 1, left)
        return nodes - self._leaves
