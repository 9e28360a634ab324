"""`Dataset`: a compacted dataset folder (manifest + Parquet files), read with pyarrow or Ray Data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.dataset as pads

from aggregation.manifest import MANIFEST_NAME, Manifest
from rollout.batch import BatchSchema, TransitionBatch


class DatasetError(ValueError):
    """A dataset folder is missing, incomplete or inconsistent with its manifest."""


class Dataset:
    """A dataset folder written by compaction.

    Example:
        >>> dataset = Dataset.open("artifacts/run-1/dataset")
        >>> dataset.to_pyarrow().to_table(columns=["obs", "action"])
        >>> dataset.to_ray().iter_torch_batches(batch_size=256)
    """

    def __init__(self, folder: Path, manifest: Manifest) -> None:
        self.folder = folder
        self.manifest = manifest
        self.schema = BatchSchema.from_json(manifest.schema)

    @classmethod
    def open(cls, folder: str | Path) -> "Dataset":
        folder = Path(folder)
        if not (folder / MANIFEST_NAME).is_file():
            raise DatasetError(f"{folder}: no {MANIFEST_NAME}; expected a dataset folder written by `harvest compact`")
        manifest = Manifest.read(folder)
        missing = [entry.path for entry in manifest.files if not (folder / entry.path).is_file()]
        if missing:
            raise DatasetError(f"{folder}: files listed in {MANIFEST_NAME} are missing: {missing}")
        return cls(folder, manifest)

    @property
    def files(self) -> list[str]:
        return [str(self.folder / entry.path) for entry in self.manifest.files]

    def to_pyarrow(self) -> pads.Dataset:
        return pads.dataset(self.files, format="parquet")

    def to_ray(self, **read_kwargs: Any) -> Any:
        import ray.data

        return ray.data.read_parquet(self.files, **read_kwargs)

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
