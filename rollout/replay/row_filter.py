"""`RowFilter`: which replay rows a reader wants, by the values of integer id columns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

import numpy as np

from harvest.rollout.batch import BatchSchema

FILTERABLE_COLUMNS = ("game_id", "player_id", "collector_id", "episode_id", "policy_version")
"""Scalar integer columns a stream can be filtered on (`game_id` and `player_id` exist only in
multi-agent envs such as Generals)."""


@dataclass(frozen=True)
class RowFilter:
    """Keep rows whose column values are all among the allowed ones (AND across columns).

    Example:
        >>> where = RowFilter.of(game_id=[3, 4], player_id=[0])
        >>> where.check(schema, "stream_experiences")   # raises if the rows have no game_id
        >>> mask = where.mask(lambda name: batch[name])
    """

    allowed: Mapping[str, tuple[int, ...]]

    @classmethod
    def of(cls, **values: Iterable[int] | None) -> "RowFilter | None":
        """A filter from column=values keywords; None where every keyword is None."""
        allowed = {name: tuple(int(value) for value in ids) for name, ids in values.items() if ids is not None}
        return cls(allowed) if allowed else None

    def check(self, schema: BatchSchema, context: str) -> None:
        """Raise ValueError naming the column unless every filtered column exists and is a scalar int."""
        for name in self.allowed:
            if name not in FILTERABLE_COLUMNS:
                raise ValueError(f"{context}: cannot filter on {name!r}; expected one of {list(FILTERABLE_COLUMNS)}")
            spec = schema.columns.get(name)
            if spec is None:
                raise ValueError(
                    f"{context}: the replay's rows have no {name!r} column to filter on "
                    f"(it comes from multi-agent envs such as generals); columns: {list(schema.columns)}"
                )
            if spec.shape != () or not np.issubdtype(spec.dtype, np.integer):
                raise ValueError(f"{context}: column {name!r} is {spec.describe()}, expected a scalar integer")

    def mask(self, column: Callable[[str], np.ndarray]) -> np.ndarray:
        """Boolean mask of the kept rows; `column(name)` returns that column's values."""
        keep: np.ndarray | None = None
        for name, ids in self.allowed.items():
            hit = np.isin(column(name), np.asarray(ids, np.int64))
            keep = hit if keep is None else keep & hit
        assert keep is not None  # `of` and `from_json` give None rather than a filter on no column
        return keep

    def to_json(self) -> dict[str, list[int]]:
        return {name: list(ids) for name, ids in self.allowed.items()}

    @classmethod
    def from_json(cls, data: Mapping[str, Iterable[int]] | None) -> "RowFilter | None":
        return cls.of(**data) if data else None
