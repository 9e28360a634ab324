"""Who made a row, and one replay shared by collectors of different kinds.

A person's session (`HumanCollector`) writes columns the simulators do not have: `source`,
`session`, `operator`, `driver`, `frame`, telemetry. When both feed one replay, its schema is
the person's, and each simulator fills the columns it lacks: `source` and `driver` with its
policy's kind (`expert`, `agent`, `random`), text with "", numbers with NaN (or -1 for
integers), so every row says where it came from and nothing is guessed later.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from harvest.rollout.batch import BatchSchema, TransitionBatch

SOURCE_BY_POLICY = {"expert": "expert", "torch": "agent", "custom": "agent", "random": "random"}
"""The `source` a simulator's rows carry, by `rollout.policy.kind`."""

Filler = Callable[[int], np.ndarray]


def _filler(name: str, dtype: np.dtype, shape: tuple[int, ...], source: str) -> Filler:
    dtype = np.dtype(dtype)
    if name in ("source", "driver"):
        value: object = source
    elif dtype.kind in "OUS":
        value = ""
    elif dtype.kind == "f":
        value = np.nan
    elif dtype.kind in "iu":
        value = -1
    elif dtype.kind == "b":
        value = False
    else:
        raise ValueError(f"column {name!r} ({dtype}): no value to fill it with for {source} rows")
    return lambda rows: np.full((rows, *shape), value, dtype=dtype)


def shared_columns(replay_schema: BatchSchema, own_schema: BatchSchema, source: str, who: str) -> dict[str, Filler]:
    """The columns `who` (a collector) must add to its rows to fit `replay_schema`, and how.

    Raises:
        ValueError: naming the columns `who` has that the replay lacks, or has with another type.
    """
    replay_columns, own_columns = dict(replay_schema.columns), dict(own_schema.columns)
    missing = sorted(set(own_columns) - set(replay_columns))
    if missing:
        raise ValueError(f"{who}: the replay has no columns {missing} (it has {sorted(replay_columns)})")
    different = sorted(name for name in own_columns if own_columns[name] != replay_columns[name])
    if different:
        raise ValueError(
            f"{who}: columns {different} are {[own_columns[n].describe() for n in different]} here "
            f"but {[replay_columns[n].describe() for n in different]} in the replay"
        )
    return {
        name: _filler(name, spec.dtype, spec.shape, source)
        for name, spec in replay_columns.items()
        if name not in own_columns
    }


def with_filled(batch: TransitionBatch, fillers: dict[str, Filler], order: list[str]) -> TransitionBatch:
    """`batch` plus the filled columns, in the replay's column order (shard grouping kept)."""
    if not fillers:
        return batch
    rows = batch.num_rows
    columns = {name: batch.columns[name] if name in batch.columns else fillers[name](rows) for name in order}
    return TransitionBatch(columns, batch.shard_offsets)


def merged_schema(first: BatchSchema, second: BatchSchema) -> BatchSchema:
    """The columns of both (the first's order, then the second's own), for one shared replay.

    Raises:
        ValueError: naming the columns both have with different types, or different spaces.
    """
    if first.observation_space != second.observation_space or first.action_space != second.action_space:
        raise ValueError(
            f"the collectors' spaces differ: {first.observation_space} / {first.action_space} vs "
            f"{second.observation_space} / {second.action_space}"
        )
    clash = sorted(
        name for name in set(first.columns) & set(second.columns) if first.columns[name] != second.columns[name]
    )
    if clash:
        raise ValueError(f"columns {clash} have different types in the collectors' rows")
    columns = {**first.columns, **{name: spec for name, spec in second.columns.items() if name not in first.columns}}
    return BatchSchema(columns, first.observation_space, first.action_space)
