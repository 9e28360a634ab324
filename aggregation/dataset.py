"""`Dataset`: a compacted dataset (manifest + Parquet files) on disk or in an object store,
read with pyarrow or Ray Data."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from aggregation.manifest import MANIFEST_NAME, Manifest
from aggregation.storage import Location, StorageError, location
from rollout.batch import BatchSchema, TransitionBatch


class DatasetError(ValueError):
    """A dataset folder is missing, incomplete or inconsistent with its manifest."""


def episode_runs(ids: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) of each run of equal consecutive episode ids."""
    if ids.size == 0:
        return []
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    return list(zip(starts.tolist(), np.r_[starts[1:], ids.size].tolist()))


def iter_record_batches(root: Location, manifest: Manifest, batch_rows: int = 65_536) -> Iterator[pa.RecordBatch]:
    """A dataset's rows in manifest order (each episode contiguous), a record batch at a time."""
    for entry in manifest.files:
        with root.fs.open_input_file(root.join(entry.path).path) as handle:
            yield from pq.ParquetFile(handle).iter_batches(batch_size=batch_rows)


def iter_episodes(batches: Iterator[dict[str, np.ndarray]]) -> Iterator[dict[str, np.ndarray]]:
    """Whole episodes (all columns) from column batches in which each episode is contiguous."""
    pending: dict[str, list[np.ndarray]] = {}
    pending_id = None
    for columns in batches:
        ids = columns["episode_id"]
        for start, stop in episode_runs(ids):
            if ids[start] != pending_id:
                if pending_id is not None:
                    yield {name: np.concatenate(parts) for name, parts in pending.items()}
                pending, pending_id = {name: [] for name in columns}, ids[start]
            for name, values in columns.items():
                pending[name].append(values[start:stop])
    if pending_id is not None:
        yield {name: np.concatenate(parts) for name, parts in pending.items()}


def _decode_batch(table: pa.Table) -> dict[str, np.ndarray]:
    return TransitionBatch.from_arrow(table).columns


class Dataset:
    """A dataset written by compaction: a local folder or an object-store prefix (`s3://...`).

    Example:
        >>> dataset = Dataset.open("artifacts/run-1/dataset")
        >>> dataset.to_pyarrow().to_table(columns=["obs", "action"])
        >>> dataset.to_ray().iter_torch_batches(batch_size=256)
    """

    def __init__(self, folder: Location, manifest: Manifest) -> None:
        self.folder = folder
        self.manifest = manifest
        self.schema = BatchSchema.from_json(manifest.schema)

    @classmethod
    def open(cls, where: str | Path | Location) -> "Dataset":
        folder = location(where)
        try:
            if not folder.join(MANIFEST_NAME).is_file():
                raise DatasetError(f"{folder}: no {MANIFEST_NAME}; expected a dataset written by `harvest compact`")
            manifest = Manifest.read(folder)
            missing = [entry.path for entry in manifest.files if not folder.join(entry.path).is_file()]
        except (StorageError, ValueError) as err:
            if isinstance(err, DatasetError):
                raise
            raise DatasetError(str(err)) from err
        if missing:
            raise DatasetError(f"{folder}: files listed in {MANIFEST_NAME} are missing: {missing}")
        return cls(folder, manifest)

    @property
    def files(self) -> list[str]:
        """The Parquet files as paths on `self.folder.fs` (for pyarrow and Ray Data with `filesystem=`)."""
        return [self.folder.join(entry.path).path for entry in self.manifest.files]

    @property
    def filesystem(self):
        return self.folder.fs

    def to_pyarrow(self) -> pads.Dataset:
        if not self.files:  # a dataset with no rows (and, when partitioned, no files)
            return pads.dataset(pa.Table.from_batches([], schema=self.schema.arrow_schema()))
        return pads.dataset(self.files, format="parquet", filesystem=self.folder.fs)

    def to_ray(self, **read_kwargs: Any) -> Any:
        """A Ray Data dataset of the rows (image columns decoded to their pixels)."""
        import ray.data

        rows = ray.data.read_parquet(self.files, filesystem=self.folder.fs, **read_kwargs)
        if self.manifest.image_columns:
            rows = rows.map_batches(_decode_batch, batch_format="pyarrow")
        return rows

    def iter_batches(self, batch_rows: int = 65_536) -> Iterator[dict[str, np.ndarray]]:
        """Every column, `batch_rows` rows at a time, in manifest order (episodes contiguous)."""
        for batch in iter_record_batches(self.folder, self.manifest, batch_rows):
            yield TransitionBatch.from_arrow(batch).columns

    def iter_episodes(self) -> Iterator[dict[str, np.ndarray]]:
        """Every column of one whole episode at a time."""
        return iter_episodes(self.iter_batches())

    def read_columns(self, columns: list[str], max_rows: int | None = None) -> dict[str, np.ndarray]:
        """Numpy arrays of `columns`, streaming record batches until `max_rows` rows are read."""
        unknown = [name for name in columns if name not in self.schema.columns]
        if unknown:
            raise DatasetError(f"{self.folder}: no columns {unknown}; it has {list(self.schema.columns)}")
        if max_rows is None:
            return TransitionBatch.from_arrow(self.to_pyarrow().to_table(columns=columns)).columns
        parts, rows = [], 0
        for record_batch in self.to_pyarrow().to_batches(columns=columns):
            parts.append(TransitionBatch.from_arrow(record_batch))
            rows += record_batch.num_rows
            if rows >= max_rows:
                break
        if not parts:
            return {name: np.empty((0, *self.schema.columns[name].shape), self.schema.columns[name].dtype)
                    for name in columns}
        return TransitionBatch.concat(parts).take(slice(0, max_rows)).columns
