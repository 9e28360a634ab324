"""The `aggregation:` section of a run config."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, StrictInt
from pydantic.dataclasses import dataclass


@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class AggregationConfig:
    formats: list[Literal["parquet", "npz", "robocode_npz"]] = Field(default_factory=lambda: ["parquet", "npz"])
    """Dataset formats to write. Parquet is always written (it is what the learners read);
    `robocode_npz`: the Robocode teams' `aggregated_expert_data.npz` (observations (N, 8),
    actions (N, 5), JSON metadata) next to it."""
    rows_per_file: StrictInt = Field(default=500_000, ge=1)
    """Parquet files are cut at episode boundaries once they reach about this many rows."""
    compression: Literal["zstd", "snappy", "lz4", "gzip", "none"] = "zstd"
    """Parquet codec."""
    read_chunk_rows: StrictInt = Field(default=65_536, ge=1)
    """Rows fetched from a shard per read call while compacting."""
    num_cpus: float = Field(default=0.25, ge=0)
    """CPUs for each compaction task (one task per shard)."""
