"""Which replay shard an episode lives in: a pure function of its id, shared by the
collectors (which group a batch's rows by shard as they cut it) and the `Replay` handle."""

from __future__ import annotations

import numpy as np


def shard_of(episode_ids: np.ndarray, num_shards: int) -> np.ndarray:
    """The shard index of every row: a splitmix64 hash of its episode id, modulo the shard count."""
    with np.errstate(over="ignore"):
        z = np.asarray(episode_ids).astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z % np.uint64(num_shards)).astype(np.int64)
