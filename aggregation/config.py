"""The `aggregation:` section of a run config."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import ConfigDict, Field, StrictInt
from pydantic.dataclasses import dataclass

from harvest.rollout.episode_filter import EpisodeFilter


@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class Hdf5Config:
    """`aggregation.hdf5`: the `_dataset.h5` written when `formats` has `hdf5`."""

    layout: Literal["columns", "episodes"] = "columns"
    """`columns`: one dataset per column under `/data` (rows in episode order) plus an
    `/episodes` table of (episode_id, start, length, return); `episodes`: a group per episode,
    `/episodes/<episode_id>/<column>`, with length, return and how it ended as attributes."""
    compression: Literal["gzip", "lzf", "none"] = "gzip"
    """HDF5 filter of every dataset: gzip (smaller, portable), lzf (faster, h5py only) or none."""
    compression_level: int = Field(default=4, ge=0, le=9)
    """gzip level (lzf has none)."""
    chunk_rows: StrictInt = Field(default=4096, ge=1)
    """Rows per HDF5 chunk (compression and partial reads work chunk by chunk)."""


DatasetFormat = Literal["parquet", "npz", "hdf5", "tfrecord", "robocode_npz"]


def _parquet_and_npz() -> list[DatasetFormat]:  # (a lambda gets no Literal context from Field's overloads)
    return ["parquet", "npz"]


@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class AggregationConfig:
    formats: list[DatasetFormat] = Field(default_factory=_parquet_and_npz)
    """Dataset formats to write. Parquet is always written (it is what the learners read);
    `npz`: `_dataset.npz`; `hdf5`: `_dataset.h5` (see `hdf5`); `tfrecord`: `_dataset.tfrecord`
    (one tf.train.Example per row, readable without TensorFlow; `_dataset.tfrecord.json` gives
    the shapes); `robocode_npz`: the Robocode teams' `aggregated_expert_data.npz` (observations
    (N, 8), actions (N, 5), JSON metadata) as `_aggregated_expert_data.npz`. Every file but the
    Parquet ones starts with `_`, so pyarrow and pandas read the folder directly (polars and DuckDB
    its `**/*.parquet`)."""
    output: Optional[str] = None
    """Where datasets go: None writes `<run>/dataset`; a folder or an object-store URI
    (`s3://bucket/prefix`, credentials and endpoint from the AWS environment) gets the run's
    dataset at `<output>/<run id>`. Learners and `harvest` commands read it from there."""
    partition_by: list[str] = Field(default_factory=list)
    """Folders for the Parquet files: `time` (`year=/month=/day=/hour=` of each episode's first
    step, UTC; episodes are never split) and/or scalar columns (`game_id`, `collector_id`, ...),
    in order, e.g. `[collector_id, time]`; each folder gets an `_index.json`. []: one folder."""
    hdf5: Hdf5Config = Field(default_factory=Hdf5Config)
    image_compression: dict[str, Literal["png", "jpeg"]] = Field(default_factory=dict)
    """Pixel columns stored as one PNG (lossless) or JPEG image per row in the Parquet files,
    e.g. `{obs: png, next_obs: png}` (uint8 (H, W[, C]) columns); every reader decodes them."""
    jpeg_quality: StrictInt = Field(default=90, ge=1, le=100)
    """JPEG quality of `image_compression: jpeg` columns (1-100)."""
    filter: Optional[EpisodeFilter] = None
    """Keep only whole episodes that pass (`min_return`, `min_length`, `ended`, ids, time range,
    `dedupe` within each shard); the manifest counts what was dropped and why."""
    rows_per_file: StrictInt = Field(default=500_000, ge=1)
    """Parquet files are cut at episode boundaries once they reach about this many rows."""
    max_file_bytes: Optional[StrictInt] = Field(default=None, ge=1)
    """Rotation by size: a Parquet file is closed at the next episode boundary once it holds
    this many bytes on disk (it is written in row groups of about a quarter of that, so it
    stops near the limit; an episode larger than the limit stays whole). None: by rows only."""
    rotate_every_s: Optional[float] = Field(default=None, gt=0)
    """Rotation by time, for long runs: every this many seconds while `harvest run` collects,
    the episodes finished since the last rotation are written as new Parquet files (and the
    manifest updated, marked `in_progress`), so the dataset grows during the run and the
    replay can evict what is already on disk. None: one compaction after collecting."""
    compression: Literal["zstd", "snappy", "lz4", "gzip", "none"] = "zstd"
    """Parquet codec."""
    read_chunk_rows: StrictInt = Field(default=65_536, ge=1)
    """Rows fetched from a shard per read call while compacting."""
    num_cpus: float = Field(default=0.25, ge=0)
    """CPUs for each compaction task (one task per shard)."""
