"""A shard's memory budget: the rows its ring can hold within `replay.capacity_bytes`, and the
error for a shard that would grow past `replay.memory_limit_bytes`."""

from __future__ import annotations

from harvest.rollout.batch import BatchSchema
from harvest.rollout.config import ReplayConfig


class ReplayMemoryError(ValueError):
    """A shard would grow past `replay.memory_limit_bytes`."""


def ring_capacity_rows(cfg: ReplayConfig, schema: BatchSchema, shard_index: int) -> int:
    """Ring slots: `capacity_rows`, or fewer where `capacity_bytes` of plain columns hold fewer.

    Raises:
        ValueError: `capacity_bytes` holds no row, or nothing beside the uncompressed columns.
    """
    plain_row_bytes = sum(spec.row_bytes for name, spec in schema.columns.items() if name not in cfg.compression)
    if cfg.capacity_bytes is None:
        return cfg.capacity_rows
    if not cfg.compression:
        rows = min(cfg.capacity_rows, cfg.capacity_bytes // schema.row_bytes)
        if rows < 1:
            raise ValueError(
                f"ReplayShard[{shard_index}]: replay.capacity_bytes={cfg.capacity_bytes:,} "
                f"holds no row of {schema.row_bytes:,} bytes"
            )
        return rows
    if cfg.capacity_rows * plain_row_bytes >= cfg.capacity_bytes:
        raise ValueError(
            f"ReplayShard[{shard_index}]: the uncompressed columns of replay.capacity_rows="
            f"{cfg.capacity_rows:,} rows take {cfg.capacity_rows * plain_row_bytes:,} bytes, leaving "
            f"nothing of replay.capacity_bytes={cfg.capacity_bytes:,} for the compressed ones; "
            "lower capacity_rows or raise capacity_bytes"
        )
    return cfg.capacity_rows
