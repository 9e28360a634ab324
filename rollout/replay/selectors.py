"""Selectors pick which stored rows `ReplayShard.sample` returns."""

from __future__ import annotations

import numpy as np


class Uniform:
    """Every stored row equally likely, with replacement."""

    def select(self, size: int, num_rows: int, rng: np.random.Generator) -> np.ndarray:
        """`num_rows` slot indices in [0, size)."""
        return rng.integers(0, size, size=num_rows)


def make_selector(name: str) -> Uniform:
    """The selector named by `replay.sampler`."""
    if name == "uniform":
        return Uniform()
    raise ValueError(f"replay.sampler: {name!r} is not a known sampler; expected 'uniform'")
